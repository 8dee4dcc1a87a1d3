"""Model files read and written: the GGUF reader and writer, safetensors,
torch.save zips (without torch) and llama2.c checkpoints.  Every size and
offset read from a file is checked before use."""
