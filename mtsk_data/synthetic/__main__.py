"""`python -m mtsk_data.synthetic --out data/embedded`: generate the embedded corpus (see `corpus`)."""

from mtsk_data.synthetic.corpus import main


# Guarded: worker processes that spawn re-import the main module.
if __name__ == "__main__":
    main()
