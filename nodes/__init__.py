"""The pack's nodes, one module per stage; each module lists its classes in NODES."""
from . import face_nodes, global_nodes, hypernet_nodes, lora_nodes

hypernet_nodes.register_model_folder()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (face_nodes, global_nodes, hypernet_nodes, lora_nodes):
    for _key, (_cls, _display) in _module.NODES.items():
        NODE_CLASS_MAPPINGS[_key] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_key] = _display
