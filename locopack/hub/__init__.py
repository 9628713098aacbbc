"""Moving releases to and from the Hugging Face Hub, and applying one at inference."""
