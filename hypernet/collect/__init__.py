"""`python -m hypernet collect`: train one identity LoRA per folder of reference photos.

Input: SRC/<identity>/ with photos (*.jpg, *.png, ...; identity_folders.PHOTO_SUFFIXES) and,
as kohya does, an optional caption `<photo stem>.txt` beside each photo (its text may use
`{token}`); photos without one get the caption template.

Output: the collection `python -m hypernet dataset` reads (data.builder's input format):

    OUT/<identity>/lora.safetensors     kohya LoRA of the layout, trained on the base model
    OUT/<identity>/<photos, captions>   the identity's photos (hard links, or copies) and .txt files
    OUT/<identity>/embedding.safetensors  the photos' ArcFace embeddings, when a face model is given
                                          (else the source folder's own embedding file, when it has one)
    OUT/<identity>/collect.json         the record: steps, final and base loss, seed, base-model
                                        SHA-256, seconds, and the settings it was trained with
    OUT/collect_run.json                the last run: settings, counts and every failure's reason

An identity is written into a hidden folder beside its final one and renamed when complete, so
a killed run loses at most the identities in flight and a re-run skips the finished ones. The
trainer itself needs ComfyUI: it lives in its own top-level package, which this package loads
by name inside each worker process (identity.TrainerHost) and never imports statically.

Modules: jobs plans the run (identities, captions, seeds, what is already done), identity is the
per-identity code path every runner shares, runners run it in-process, in worker processes or
as Ray tasks, report draws the progress bar and the summary, run ties them together.
"""
