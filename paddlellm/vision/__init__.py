"""Image input for vision-language checkpoints: decoding (Pillow) and the checkpoint's own preprocessing.

numpy and Pillow only (no paddle), so the Triton tokenizer model can run it off the engine's step loop:
- `image_decode.decode_image`: bytes -> RGB PIL image, formats and a pixel bound checked from the header
  before any pixel is decoded;
- `image_config.ImageProcessorConfig`: the rules of a checkpoint's preprocessor_config.json;
- `qwen2_vl_processor.preprocess_image`: Qwen2-VL / Qwen2.5-VL smart resize, rescale, normalise, patchify;
- `chat_images.ChatImages`: a chat's image parts -> template-ready messages, preprocessed images, expanded
  placeholders (the tokenizer model's image step);
- `image_inputs.ImageInputs`: a request's images as the engine receives them (docs/multimodal.md).
"""
