"""The pack's nodes (ComfyUI V3 schema), one module per stage; each module lists its classes in NODES."""
from . import face_nodes, global_nodes, glyph_nodes, hypernet_nodes, lora_nodes, refine_nodes
from .comfy_glue import ComfyExtension, io

hypernet_nodes.register_model_folder()
glyph_nodes.register_model_folder()

NODES: list[type[io.ComfyNode]] = [*face_nodes.NODES, *global_nodes.NODES, *hypernet_nodes.NODES, *lora_nodes.NODES,
                                  *glyph_nodes.NODES, *refine_nodes.NODES]


class LoraHypernetExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LoraHypernetExtension:
    return LoraHypernetExtension()


def node_ids() -> dict[str, type[io.ComfyNode]]:
    """{node id: class}, as ComfyUI registers them (for tests and scripts)."""
    return {cls.GET_SCHEMA().node_id: cls for cls in NODES}
