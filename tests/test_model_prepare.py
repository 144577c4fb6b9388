"""prepare_model's embedded conversion: the GGUF's metadata is parsed once however many transformers calls
open it (each parse of the real file's 262k-token vocabulary took about 20 s on two cores)."""
import gguf
import numpy as np

from peftbench.model import gguf_parsed_once


def write_gguf(path):
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(64)])
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_one_reader_serves_every_open_of_a_file_within_the_block(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path)
    original = gguf.GGUFReader
    with gguf_parsed_once():
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is second
        assert np.array_equal(first.tensors[0].data.reshape(3, 4), np.arange(12).reshape(3, 4))
        other = tmp_path / "other.gguf"
        write_gguf(other)
        assert gguf.GGUFReader(other) is not first  # another file gets its own reader
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first  # outside the block, readers are fresh again


def test_the_reader_is_restored_when_the_block_fails(tmp_path):
    original = gguf.GGUFReader
    try:
        with gguf_parsed_once():
            raise RuntimeError("conversion failed")
    except RuntimeError:
        pass
    assert gguf.GGUFReader is original


def test_the_embedded_source_checks_its_chat_format_on_the_converted_model(tmp_path, monkeypatch):
    """The embedded model is converted into the step's temporary folder and gets the built-in Gemma template;
    its format is read from there, before the folder is moved into place (the demo's first step)."""
    import json
    import shutil

    import peftbench.model as model_module
    from tiny import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    (tiny / "chat_template.jinja").unlink()  # as the GGUF's tokenizer: no template of its own
    monkeypatch.setattr(model_module, "_convert_embedded_gguf", lambda out: shutil.copytree(tiny, out))
    info = model_module.prepare_model({"source": "embedded", "id": "google/gemma-3-270m"}, tmp_path / "model")
    assert info["path"] == str((tmp_path / "model" / "hf").resolve()) and info["chat_template"] == "gemma"
    assert info["format"]["end_of_turn"] == "<end_of_turn>" and info["format"]["system_role"] == "folded"
    assert json.loads((tmp_path / "model" / "model.json").read_text()) == info
