"""The T5 student: model and configs (`t5`), target log-likelihoods (`scoring`), KV-cache decoding
(`decoding`), checkpoints (`checkpoints`) and Hugging Face conversion (`hf_convert`)."""
