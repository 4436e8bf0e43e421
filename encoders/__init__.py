"""The proposed audiovisual encoder (1D ResNet18 on raw audio) and its pretraining."""
