"""Pretraining objectives that are not tied to one encoder (bench.pretrain.objective's registry).

Each module registers its objectives with `@register_objective`; any trainable encoder that
meets their `ObjectiveNeeds` can be pretrained with them: `avbench pretrain resnet18 --objective dino`.

  contrastive  simclr and moco: two segments of one utterance, contrasted against other utterances
  dino         dino: self-distillation from a momentum teacher over global and local segments
  supervised   supervised: cross-entropy on a manifest label column (words, speakers, emotion)
  views        what the speaker objectives share: segments, augmentation, statistics pooling, heads
"""
