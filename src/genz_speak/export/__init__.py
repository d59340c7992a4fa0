"""Shipping the merged model: GGUF files, an Ollama Modelfile, a model card, and the Hub upload."""
