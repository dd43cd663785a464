"""Converters: foreign checkpoints (Caffe2 pickles, DeepMind I3D) into zoo state dicts, with verified downloads."""
