"""Publishing to the Hugging Face Hub: the recipe section (config), the credential scan (secret_scan), the model card
(model_card) and the upload itself (upload)."""
