"""Checkpoint → family: find a checkpoint (locate, the shipped canaries), load it strictly (loading,
checkpoint), apply LoRA adapters (adapters), and the one interface each model family implements (families/).
Nothing above this package branches on which family a checkpoint is."""
