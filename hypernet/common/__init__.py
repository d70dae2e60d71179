"""What every layer uses, written once.

- errors live one level up (hypernet.errors); here:
- files: atomic safetensors writes, sha256_file, read_json_object, check_filename_prefix.
- safetensors_header: the checked header reader every untrusted .safetensors goes through.
- messages: quoting untrusted text in one-line error messages.
- tensors: seeded generators, unit vectors, the mean of embeddings, the finiteness check.
- images: photos read upright and RGB, refused past a pixel budget before decoding.
"""
