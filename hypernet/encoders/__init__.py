"""Image encoders that turn reference photos into conditions.

- face: ArcFace embeddings of the largest face (FaceAnalyzer, ArcFaceEmbedder), slerp.
- insightface_pack: finding and loading the detector and recogniser of an insightface pack.
- onnx_providers: onnxruntime provider names and the clashing-distributions warning.
- global_features: CLIP image features through open_clip, matching ComfyUI's CLIP vision.
- clip_weights: CLIP image-encoder weights from .safetensors in open_clip's names.
- encoder_info: EncoderInfo, which encoder made a set of features, and its checks.
"""
