"""Textual Inversion on the engine: the trained vectors, saved in models/embeddings, give
core's CLIPTextEncode with `embedding:name` exactly the conditioning training used; the files
have the key names and shapes A1111 / sd-scripts / ComfyUI read; only the vectors change."""
import safetensors
import safetensors.torch
import pytest
import torch

import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models_base
import nodes
from lllite_kit.training.comfy_bridge import TextConditioner, token_embedding_tables, trainable_model, word_token_ids
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.engine import TrainingEngine
from lllite_kit.training.textual_inversion import (OBJECT_TEMPLATES, TextualInversionAdapter, TextualInversionOptions,
                                                   caption_rewrite, start_vectors)
from training_helpers import ListData, no_metadata, unit_group_norms


def clip_reading(tiny, family: str, folder) -> comfy.sd.CLIP:
    """tiny.build_clip's CLIP (same weights), reading embeddings from `folder` as the checkpoint
    loaders' CLIPs read models/embeddings."""
    tokenizer, encoder = ((comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel) if family == "sdxl"
                          else (comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel))
    options = {"clip_l_model_config": tiny.CLIP_L, "clip_g_model_config": tiny.CLIP_G, "dtype": torch.float32}
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer, encoder), embedding_directory=[str(folder)],
                         model_options=options)
    tiny.fill_seeded(clip.cond_stage_model, 1)
    return clip


def test_captions_name_the_embedding_and_templates_replay_with_the_seed():
    rewrite = caption_rewrite("sks", "people/anna")
    assert rewrite("sks, a woman", False) == "embedding:people/anna, a woman"
    assert rewrite("a photo of sks", True) == "a photo of embedding:people/anna"
    assert rewrite("(sks:1.2) smiling", False) == "( embedding:people/anna:1.2) smiling"  # ComfyUI needs a space or the start
    with_templates = caption_rewrite("sks", "anna", "object")
    torch.manual_seed(3)
    first = [with_templates("ignored caption", False) for _ in range(6)]
    torch.manual_seed(3)
    assert [with_templates("other caption", False) for _ in range(6)] == first
    assert all(c in {t.format("embedding:anna") for t in OBJECT_TEMPLATES} for c in first) and len(set(first)) > 1
    assert with_templates("a sks prompt", True) == "a embedding:anna prompt"  # prompts keep their text
    with pytest.raises(ValueError, match="one word"):
        TextualInversionOptions("two words")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_vectors_start_from_the_init_words_tokens(family, tiny):
    clip = tiny.build_clip(family, 0)
    vectors = start_vectors(clip, TextualInversionOptions("sks", init_word="red cat", num_vectors_per_token=3), seed=0)
    tables = token_embedding_tables(clip)
    ids = word_token_ids(clip, "red cat")
    assert sorted(vectors) == (["clip_g", "clip_l"] if family == "sdxl" else ["clip_l"])
    for key, v in vectors.items():
        assert len(ids[key]) == 2
        torch.testing.assert_close(v, tables[key][[ids[key][0], ids[key][1], ids[key][0]]].float(), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_trained_embedding_through_core_clip_text_encode_is_the_training_conditioning(family, tiny, comfy_dirs):
    folder = comfy_dirs / "models" / f"embeddings_{family}"
    name = f"ti_{family}"
    with torch.inference_mode():
        model = tiny.build_model(family, 0)
        unit_group_norms(model)
        clip = clip_reading(tiny, family, folder)
    encoder_before = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
    prompt = "a photo of sks, red"
    with torch.inference_mode(False), trainable_model(model) as tm:
        options = TextualInversionOptions("sks", init_word="cat", num_vectors_per_token=2)
        adapter = TextualInversionAdapter(start_vectors(clip, options, 0), tm.family, "sks")
        start = {k: v.detach().clone() for k, v in adapter.vectors.items()}
        text = TextConditioner(clip, tm.family, trainable=True, embeddings=adapter.embeddings(name),
                               rewrite=caption_rewrite("sks", name))
        data = ListData(n=2, bs=1)
        data.captions = ["a photo of sks 0", "sks, a photo"]
        cfg = TrainConfig(max_train_steps=1, learning_rate=5e-2, output_name=name, save_precision="float")
        result = TrainingEngine(cfg, tm, text, adapter, data, folder, no_metadata).run()
        with torch.no_grad():
            trained_context, trained_pooled = text.encode([prompt], torch.device("cpu"), prompts=True)
        text.close()
    for k, v in adapter.vectors.items():
        assert (v.detach() - start[k]).abs().max() > 1e-3  # the vectors learned
    after = clip.cond_stage_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())  # and nothing else did

    tensors = safetensors.torch.load_file(str(result.final_path))
    widths = {"clip_l": tiny.CLIP_L["hidden_size"], "clip_g": tiny.CLIP_G["hidden_size"]}
    expected = {k: (2, w) for k, w in widths.items()} if family == "sdxl" else {"emb_params": (2, widths["clip_l"])}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected  # sd-scripts' / A1111's layout
    with safetensors.safe_open(str(result.final_path), "pt") as f:
        assert f.metadata()["ss_token_string"] == "sks"

    with torch.inference_mode():
        (cond,) = nodes.CLIPTextEncode().encode(clip, prompt.replace("sks", f"embedding:{name}"))[0]
        (plain,) = nodes.CLIPTextEncode().encode(clip, prompt)[0]
    assert torch.equal(cond[0], trained_context)
    assert (plain[0] - trained_context).abs().max() > 1e-3  # the embedding is what makes it equal
    if family == "sdxl":
        assert torch.equal(cond[1]["pooled_output"], trained_pooled)
