# Save a tiny random Llama, load it back in float16 on the GPU, and generate with it.
# pytest: huggingface, timeout=300
"""Runs as a test through pytest-heavy's examples runner; ``huggingface`` implies a GPU (ini
``heavy_gpu_markers``), so without one it is skipped with the probe's reason. No download: the model is
built from a config and goes through the real ``save_pretrained`` / ``from_pretrained`` path.
"""

import sys
import tempfile

try:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
except ModuleNotFoundError as exc:
    print(f"{exc.name} is not installed (make install WITH_TORCH=1 adds it)", file=sys.stderr)
    sys.exit(77)

if not torch.cuda.is_available():  # NVML sees a GPU that this torch cannot use (a CPU build, say)
    print(f"torch {torch.__version__} cannot use the GPU (CPU build or driver mismatch)", file=sys.stderr)
    sys.exit(77)

config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                     bos_token_id=None, eos_token_id=None, pad_token_id=0)
torch.manual_seed(0)
with tempfile.TemporaryDirectory() as path:
    LlamaForCausalLM(config).save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16).to("cuda").eval()

prompt = torch.tensor([[5, 17, 42, 99, 7]], device="cuda")
first = model.generate(prompt, do_sample=False, max_new_tokens=16, min_new_tokens=16)
again = model.generate(prompt, do_sample=False, max_new_tokens=16, min_new_tokens=16)
print(f"{torch.cuda.get_device_name()}: {first[0, prompt.shape[1]:].tolist()}")
print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
assert first.shape == (1, prompt.shape[1] + 16) and torch.equal(first, again)
