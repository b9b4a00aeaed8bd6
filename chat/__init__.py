"""Chat about the user's code: sessions saved on disk, the prompt from the model's chat template,
attachments and retrieved definitions, and answers streamed from the chat model."""
