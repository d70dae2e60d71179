"""The typeface miniature of the paper's experiment (issue 17): a typeface plays the person.

Its glyphs are the photos (``glyphs``), curated Debian font packages are the people
(``fonts``), and a small CNN trained with the ArcFace loss on glyph images plays ArcFace
(``typeface_encoder``). ComfyUI-free, like ``hypernet/``, except the glyph base model's
``comfy_*``, ``glyph_sampling`` and ``train_base`` modules, which run it through ComfyUI.
"""
