"""Text: tokenizer wrapper, chat templates and the pure streaming detokenizer step (the engine side of text;
stop strings are the gateway's, in gateway/stop_strings.py)."""
