"""Every other feature extractor the paper compares against: MFCC-39, log-mel, APC, wav2vec, PASE+."""
