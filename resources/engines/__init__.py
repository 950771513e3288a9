"""The engines behind one protocol (in-process vLLM, a pool of vLLM servers) and their loops."""
