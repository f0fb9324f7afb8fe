"""Dataset readers, SynthME, preprocessing and TFDS builders."""
