"""`python -m iad.preprocessing [dataset=rsna] [preprocess.image_size=384] [workers=8]`: build the cache alone."""

from iad.prepare import main

main()
