"""llama-mtsk: the Hugging Face implementation of Llama-MTSK.

The modules in this package are the model's remote code: `save_pretrained` copies them, flat, into every checkpoint,
so that `AutoModel.from_pretrained(..., trust_remote_code=True)` works without this package installed.
"""

from .configuration_llama_mtsk import AVHubertConfig, LlamaMTSKConfig
from .modeling_llama_mtsk import (
    AVHubertVideoEncoder,
    LlamaMTSKForConditionalGeneration,
    LlamaMTSKPreTrainedModel,
    compress_frames,
)


__all__ = [
    "AVHubertConfig",
    "AVHubertVideoEncoder",
    "LlamaMTSKConfig",
    "LlamaMTSKForConditionalGeneration",
    "LlamaMTSKPreTrainedModel",
    "compress_frames",
]
