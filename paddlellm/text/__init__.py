"""Text: tokenizer wrapper, chat templates, the pure streaming detokenizer step, stop strings.

Nothing is imported here: the gateway imports paddlellm.text.stop alone and must not pull in tokenizers.
"""
