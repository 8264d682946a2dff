"""A self-contained HTML page replaying a decoding trace step by step, tokens coloured by confidence."""

from __future__ import annotations

import html
import json
from typing import Callable, Sequence

from dmax_jax.decoding.results import RowResult
from dmax_jax.io import write_text_atomic

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:70em}
.tok{display:inline-block;margin:2px;padding:2px 4px;border-radius:3px;font-family:monospace;white-space:pre}
.prompt{background:#ddd}.mask{background:#f4f4f4;color:#999}.cur{outline:2px solid #333}
#info{margin:1em 0;color:#333}
</style></head><body>
<h2>__TITLE__</h2>
<div><button onclick="go(-1)">&#9664;</button> <input id="s" type="range" min="0" value="0" oninput="show(+this.value)">
<button onclick="go(1)">&#9654;</button> <button onclick="play()">play</button></div>
<div id="info"></div><div id="row"></div>
<p>Colour: confidence (max probability) of the token at that step, red = 0, green = 1; grey = prompt; pale = still masked;
outlined = the block being decoded.</p>
<script>
const D = __DATA__;
const s = document.getElementById('s'); s.max = D.frames.length - 1;
function esc(t){return t.replace(/&/g,'&amp;').replace(/</g,'&lt;')}
function show(i){
  const f = D.frames[i]; let out = '';
  f.tokens.forEach((t, j) => {
    let cls = 'tok', style = '';
    if (j < D.prompt_len) cls += ' prompt';
    else if (t === D.mask_id) cls += ' mask';
    else if (f.conf[j] !== null) style = `background:hsl(${Math.round(120 * f.conf[j])},70%,75%)`;
    if (j >= f.block_start && j < f.block_start + D.block_length) cls += ' cur';
    const label = t === D.mask_id ? '[M]' : (D.vocab[t] ?? String(t));
    const tip = f.conf[j] === null ? '' : ` title="p=${f.conf[j].toFixed(3)}"`;
    out += `<span class="${cls}" style="${style}"${tip}>${esc(label)}</span>`;
  });
  document.getElementById('row').innerHTML = out;
  document.getElementById('info').textContent = `${f.label}  (frame ${i + 1}/${D.frames.length})`;
  s.value = i;
}
function go(d){show(Math.min(D.frames.length - 1, Math.max(0, +s.value + d)))}
function play(){let i = 0; const h = setInterval(() => {show(i++); if (i >= D.frames.length) clearInterval(h)}, 400)}
show(0);
</script></body></html>
"""


def replay_frames(prompt: Sequence[int], result: RowResult, mask_id: int, block_length: int) -> list[dict]:
  """One frame per decoding step: the whole sequence after that step and per-position confidences."""
  tokens = list(prompt) + [mask_id] * len(result.generated)
  conf: list[float | None] = [None] * len(tokens)
  frames = [{"tokens": list(tokens), "conf": list(conf), "block_start": len(prompt) // block_length * block_length,
             "label": "start"}]
  for st in result.trace or []:
    start = st["block_start"]
    for j, (tok, p) in enumerate(zip(st["block_tokens_after"], st["max_prob"])):
      if start + j < len(tokens) and start + j >= len(prompt):
        tokens[start + j] = tok
        conf[start + j] = None if tok == mask_id else round(float(p), 4)
    label = f"block {st['block']}, step {st['step']}"
    if st["stop_reason"]:
      label += f" (block ends: {st['stop_reason']})"
    frames.append({"tokens": list(tokens), "conf": list(conf), "block_start": start, "label": label})
  final = list(prompt) + list(result.generated)
  frames.append({"tokens": final, "conf": conf[:len(final)], "block_start": -10 ** 9,
                 "label": f"final: NFE {result.nfe}, TPF {result.tpf:.2f}"})
  return frames


def write_replay(path: str, prompt: Sequence[int], result: RowResult, mask_id: int, block_length: int,
                 token_text: Callable[[int], str] | None = None, title: str = "dmax-jax decoding replay") -> None:
  """Writes the page atomically (temp file + rename). `token_text` maps an id to its display string."""
  if result.trace is None:
    raise ValueError("the result has no trace: decode with DecodeOptions(trace=True)")
  frames = replay_frames(prompt, result, mask_id, block_length)
  ids = sorted({t for f in frames for t in f["tokens"]})
  vocab = {t: (token_text(t) if token_text else str(t)) for t in ids}
  data = {"frames": frames, "prompt_len": len(prompt), "mask_id": mask_id, "block_length": block_length,
          "vocab": vocab}
  page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", json.dumps(data).replace("</", "<\\/"))
  write_text_atomic(path, page)
