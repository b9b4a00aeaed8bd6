"""What to ask the model for at a cursor, the prompt, and what to do with the answer."""
