"""The shapes world: a synthetic scene generator with exact masks (``world``), its word tokenizer
(``tokenizer``) and the training of the stand-in models shipped with faithclip (``train_clip``,
``train_vit``, ``train_siglip``, sharing ``training``).

It imports nothing from faithclip above ``errors``: data loaders, the audit, the demo and the CLI use it."""
