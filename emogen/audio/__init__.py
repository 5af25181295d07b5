"""Audio: one clip decoded, standardized and turned into a log-mel (numpy, `clips`), and mels back to audio (torch, `mel`)."""
