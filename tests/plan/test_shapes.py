"""The shape-timed step model: the recorded calls are the model's own Linears (LoRA and head
included), the time model sums their measured times, and the per-machine cache round-trips."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from transformers import LlamaConfig

from shoestring.plan.arch import describe_model
from shoestring.plan.calibrate import derive_shape_rates
from shoestring.plan.memory import TrainingSetup
from shoestring.plan.shape_timing import measure_shapes
from shoestring.plan.shapes import (
    LinearCall,
    optimizer_seconds,
    shape_seconds,
    step_shapes,
    step_shapes_cached,
)


def _config(**over: object) -> LlamaConfig:
    # The conftest's tiny Llama: 2 GQA blocks, 64 wide, untied 512-token vocabulary.
    cfg: dict[str, object] = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                              "max_position_embeddings": 512, "tie_word_embeddings": False}
    cfg.update(over)
    return LlamaConfig(**cfg)


def _linears(shapes: object) -> list[tuple[LinearCall, int]]:
    return list(shapes.linears)  # type: ignore[attr-defined]


def test_full_training_records_every_linear_once_with_its_shape_and_gradients() -> None:
    config = _config()
    shape = describe_model(config, "causal-lm")
    got = step_shapes(config, "causal-lm", TrainingSetup(method="full", micro_batch_size=2, seq_len=16,
                                                         fast_paths=False))
    # Exactly the model's Linear modules: 7 per block x 2 blocks + the head, by (in, out).
    expected: dict[tuple[int, int], int] = {}
    for in_out in shape.linear_shapes.values():
        expected[in_out] = expected.get(in_out, 0) + 1
    recorded: dict[tuple[int, int], int] = {}
    for c, n in _linears(got):
        recorded[(c.in_features, c.out_features)] = recorded.get((c.in_features, c.out_features), 0) + n
    assert recorded == expected
    head = [c for c, _ in _linears(got) if c.out_features == 512]
    assert len(head) == 1 and head[0].tokens == 2 * 15  # the loss module: positions with a next token
    assert not head[0].in_block
    blocks = [c for c, _ in _linears(got) if c.out_features != 512]
    assert all(c.tokens == 32 and c.input_grad and c.weight_grad and c.lora_rank == 0 for c in blocks)
    # Stock path: one attention call per block, boolean mask, K/V repeated to all heads.
    ((att, n),) = got.attention
    assert n == 2 and (att.batch, att.heads, att.kv_heads, att.q_len, att.head_dim) == (2, 4, 4, 16, 16)
    assert att.masked and not att.causal and att.grad
    # The trainer's loss over the same positions, and one AdamW step over every trainable tensor.
    ((loss, _),) = got.loss
    assert (loss.rows, loss.vocab, loss.logits_dtype) == (30, 512, "float32")
    assert got.optimizer is not None and len(got.optimizer.shapes) == 2 * 9 + 3  # + embedding, final norm, head


def test_fast_paths_time_one_causal_fp32_block_per_document_and_fast_lora_calls() -> None:
    config = _config()
    setup = TrainingSetup(method="lora", micro_batch_size=2, seq_len=16, doc_segments=((6, 1.0), (10, 0.5)),
                          precision="bf16-mixed")
    got = step_shapes(config, "causal-lm", setup)
    # Per layer and row: one 6-token document and half a 10-token one (the segment mix), K/V at
    # their own 2 heads, causal without a mask, in fp32 (the trainer's CPU blocks).
    att = {c.q_len: (c, n) for c, n in got.attention}
    assert sorted(att) == [6, 10]
    assert att[6][1] == pytest.approx(2 * 2 * 1.0) and att[10][1] == pytest.approx(2 * 2 * 0.5)
    for c, _ in att.values():
        assert (c.batch, c.heads, c.kv_heads, c.causal, c.masked, c.enable_gqa, c.dtype) == (1, 4, 2, True, False,
                                                                                               True, "fp32")
        assert c.packed_docs and c.key("bf16") != replace(c, packed_docs=False).key("bf16")
    assert all(c.fast for c, _ in got.linears if c.lora_rank)
    # The stock path: one masked call per layer, stock LoRA calls.
    stock = step_shapes(config, "causal-lm", replace(setup, fast_paths=False))
    assert [c.masked for c, _ in stock.attention] == [True] and not any(c.fast for c, _ in stock.linears)
    # A bigger micro-batch means more documents, not a bigger one.
    s4 = step_shapes_cached(config, replace(setup, micro_batch_size=4))
    assert {c.q_len: n for c, n in s4.attention} == {6: pytest.approx(8.0), 10: pytest.approx(4.0)}


def test_lora_calls_are_peft_modules_of_the_planned_rank_and_the_head_stays_frozen() -> None:
    config = _config()
    got = step_shapes(config, "causal-lm", TrainingSetup(method="lora", lora_rank=8, lora_dropout=0.1,
                                                         micro_batch_size=1, seq_len=16))
    calls = _linears(got)
    adapted = [(c, n) for c, n in calls if c.lora_rank]
    assert sum(n for _, n in adapted) == 14  # all-linear: every block Linear, not the head
    assert all(c.lora_rank == 8 and c.lora_dropout == 0.1 and not c.weight_grad for c, _ in adapted)
    (head,) = [c for c, _ in calls if not c.lora_rank]
    assert (head.in_features, head.out_features, head.weight_grad, head.input_grad) == (64, 512, False, True)
    # Frozen embeddings: the first block's q/k/v inputs need no gradient; everything later does.
    assert sum(n for c, n in adapted if not c.input_grad) == 3
    # The optimizer steps only the adapters: A (r x in) and B (out x r) of 14 Linears.
    assert got.optimizer is not None and len(got.optimizer.shapes) == 28
    assert all(8 in s for s in got.optimizer.shapes)


def test_frozen_lower_blocks_get_no_backward_and_bf16_records_autocast_inputs() -> None:
    config = _config(num_hidden_layers=3)
    got = step_shapes(config, "causal-lm", TrainingSetup(method="frozen", trainable_layers=1, micro_batch_size=1,
                                                         seq_len=16, precision="bf16-mixed"))
    no_backward = sum(n for c, n in _linears(got) if not c.input_grad and not c.weight_grad)
    assert no_backward == 2 * 7  # the two frozen blocks
    assert sum(n for a, n in got.attention if not a.grad) == 2
    # Their operators and allocations run forward only: counted at a third of a trained block's.
    full = step_shapes(config, "causal-lm", TrainingSetup(method="full", micro_batch_size=1, seq_len=16,
                                                          precision="bf16-mixed"))
    assert full.ops / 3 < got.ops < 0.75 * full.ops
    assert full.allocated_bytes / 3 < got.allocated_bytes < 0.75 * full.allocated_bytes
    dtypes = {(c.in_features, c.out_features): c.input_dtype for c, _ in _linears(got)}
    assert dtypes[(160, 64)] == "bfloat16"  # down_proj eats the bf16 MLP product
    assert dtypes[(64, 160)] == "float32"  # gate/up eat the fp32 norm output


def test_cached_shapes_scale_with_the_micro_batch() -> None:
    config = _config()
    s4 = step_shapes_cached(config, TrainingSetup(method="full", micro_batch_size=4, seq_len=16))
    direct = step_shapes(config, "causal-lm", TrainingSetup(method="full", micro_batch_size=4, seq_len=16))
    assert sorted(map(repr, s4.linears)) == sorted(map(repr, direct.linears))
    assert s4.attention == direct.attention
    # The forward's allocations grow with the batch (within 5%: rotary tables and such do not);
    # its operator count barely does (within 5%: a batch of one dispatches a few ops fewer).
    assert direct.allocated_bytes > 0 and s4.allocated_bytes == pytest.approx(direct.allocated_bytes, rel=0.05)
    assert direct.ops > 0 and s4.ops == pytest.approx(direct.ops, rel=0.05)


def test_time_model_sums_measured_calls_and_recomputes_blocks_under_checkpointing() -> None:
    config = _config()
    shapes = step_shapes_cached(config, TrainingSetup(method="full", micro_batch_size=2, seq_len=16))
    table = {}
    for i, (c, _n) in enumerate(shapes.calls()):
        table[c.key("fp32")] = [0.001 * (i + 1), 0.003 * (i + 1)]
    expected = sum(n * table[c.key("fp32")][1] for c, n in shapes.calls())
    assert shape_seconds(shapes, "fp32", table) == pytest.approx(expected)
    recompute = sum(n * table[c.key("fp32")][0] for c, n in (*shapes.linears, *shapes.attention)
                    if not isinstance(c, LinearCall) or c.in_block)  # the blocks, not the head or the loss
    assert shape_seconds(shapes, "fp32", table, checkpointing=True) == pytest.approx(expected + recompute)
    assert shape_seconds(shapes, "bf16", table) is None  # not timed in that precision
    # Another micro-batch size: the nearest timed size scaled by the rows.
    s4 = step_shapes_cached(config, TrainingSetup(method="full", micro_batch_size=4, seq_len=16))
    assert shape_seconds(s4, "fp32", table) == pytest.approx(2 * expected)


def test_in_step_factor_and_per_operator_cost_are_fitted_over_the_probes() -> None:
    k, c = 1.3, 2e-5
    probes = [{"precision": "fp32", "heap": "default", "matmul_seconds": m, "ops": n, "step_seconds": k * m + c * n}
              for m, n in ((0.4, 4000), (0.01, 1500), (2.0, 9000))]
    # The same probes under the bounded heap: the same work plus a page fault per fresh page.
    fault = 3e9
    bounded = [{**p, "heap": "bounded", "allocated_bytes": a, "step_seconds": p["step_seconds"] + a / fault}
               for p, a in zip(probes, (2e9, 1e8, 5e9), strict=True)]
    got = derive_shape_rates(probes + bounded)
    assert got["matmul_factor"]["fp32"] == pytest.approx(k)
    assert got["op_seconds"]["fp32"] == pytest.approx(c)
    assert got["fault_rate"]["fp32"] == pytest.approx(fault)
    assert set(got["matmul_factor"]) == {"fp32"}  # the bounded probes do not move k or c
    # Two precisions share the operator cost: fitted once over all six probes, k per precision.
    bf16 = [{**p, "precision": "bf16", "step_seconds": 0.8 * p["matmul_seconds"] + c * p["ops"]} for p in probes]
    got = derive_shape_rates(probes + bf16)
    assert got["matmul_factor"] == {"fp32": pytest.approx(k), "bf16": pytest.approx(0.8)}
    assert got["op_seconds"] == {"fp32": pytest.approx(c), "bf16": pytest.approx(c)}
    # Timed calls that already cover the steps: no per-operator term (not a negative one).
    probes = [{**p, "step_seconds": p["matmul_seconds"] * 0.9} for p in probes]
    got = derive_shape_rates(probes)
    assert got["matmul_factor"]["fp32"] == pytest.approx(0.9) and got["op_seconds"]["fp32"] == 0.0
    # A single probe cannot separate the two: k = 1 and the operator cost from its remainder.
    got = derive_shape_rates([{"precision": "fp32", "heap": "default", "matmul_seconds": 0.4, "ops": 1000,
                               "step_seconds": 0.5}])
    assert got["matmul_factor"]["fp32"] == 1.0 and got["op_seconds"]["fp32"] == pytest.approx(1e-4)


def test_measured_shapes_are_cached_per_machine_and_used_by_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.plan.hardware import cpu_device, load_hardware, save_hardware
    from shoestring.plan.search import Workload, evaluate, measured_matmul_seconds

    config = _config()
    setup = TrainingSetup(method="lora", lora_rank=4, micro_batch_size=1, seq_len=8)
    shapes = step_shapes_cached(config, setup)
    table = measure_shapes(shapes, "fp32", min_seconds=0.0)  # a real subprocess timing the tiny shapes
    keys = shapes.keys("fp32")
    assert set(keys) <= set(table) and all(table[k][0] > 0 and table[k][1] > 0 for k in keys)
    hw = load_hardware()
    assert set(keys) <= set(hw["shape_times"])  # stored in this machine's hardware cache

    def no_subprocess(*_a: object, **_k: object) -> None:
        raise AssertionError("cached shapes must not be re-timed")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert measure_shapes(shapes, "fp32") == hw["shape_times"]
    # With calibrated shape rates the search costs the step from the timed shapes.
    hw["calibration"] = {"shape_model": {"matmul_factor": {"fp32": 2.0}, "op_seconds": {"fp32": 1e-5}}}
    save_hardware(hw)
    dev = cpu_device()
    mm = measured_matmul_seconds(config, setup, dev)
    opt = optimizer_seconds(shapes, table)
    assert opt is not None and opt > 0
    timed = 2.0 * (shape_seconds(shapes, "fp32", table) + opt)  # type: ignore[operator]
    assert shapes.ops > 0 and mm == pytest.approx(timed + 1e-5 * shapes.ops)
    shape = describe_model(config, "causal-lm")
    cand = evaluate(config, shape, setup, Workload(sequences=1, tokens_per_sequence=8, batch_size=1), dev,
                    memory_limit=2**40, grad_accum=1)
    assert cand.run.step_seconds == pytest.approx(mm)  # the whole step comes from the timed shapes
    uncalibrated = replace(dev, matmul_factor_by_dtype={})
    assert measured_matmul_seconds(config, setup, uncalibrated) is None
    # Under the bounded heap every fresh allocation pages in: + allocated bytes / fault rate.
    assert shapes.allocated_bytes > 0
    faulting = replace(dev, fault_rate_by_dtype={"fp32": 1e9})
    bounded = measured_matmul_seconds(config, replace(setup, bounded_heap=True), faulting)
    assert bounded == pytest.approx(mm + shapes.allocated_bytes / 1e9)  # type: ignore[operator]


def test_padded_batches_are_costed_at_their_expected_width() -> None:
    # Half the records are 32 tokens, half 128: a batch of 4 is 128 wide unless all four are short.
    setup = TrainingSetup(task="classification", micro_batch_size=4, seq_len=128, record_lengths=(32,) * 8 + (128,) * 8)
    assert setup.expected_width() == round(128 - 96 * 0.5**4)
    assert replace(setup, micro_batch_size=1).expected_width() == 80
    assert replace(setup, record_lengths=()).expected_width() == 128
    # An attention shape timed at one length and batch is scaled to another: linear in the
    # sequences, quadratic in the length.
    from shoestring.plan.shapes import AttentionCall, _lookup

    timed = AttentionCall(batch=4, heads=2, kv_heads=2, q_len=128, kv_len=128, head_dim=16, masked=True,
                          causal=False, dropout=0.1, grad=True)
    table = {timed.key("fp32"): [0.01, 0.04]}
    narrower = replace(timed, batch=8, q_len=64, kv_len=64)
    assert _lookup(narrower.key("fp32"), 8, table) == pytest.approx([0.01 * 2 / 4, 0.04 * 2 / 4])
