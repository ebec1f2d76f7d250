"""report.html and comparison.html opened in headless Chromium, as a reader would: every image
loads, every in-page link lands on an element, nothing is wider than a 1400 px window."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from report_helpers import fake_record, write
from test_report_page import full_folder

from lofit_bench.cli import main
from lofit_bench.records.store import write_json_atomic

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)

pytestmark = [
    pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install -y chromium)"),
    pytest.mark.usefixtures("builtin_plugins_only"),
]

#: Appended to a copy of the page: the page itself carries no scripts.
CHECK = """<script>
window.addEventListener("load", () => {
  const links = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute("href").slice(1));
  const result = {
    images: document.images.length,
    broken: [...document.images].filter(image => !(image.complete && image.naturalWidth > 0)).map(image => image.alt),
    links: links.length,
    unresolved: links.filter(id => !document.getElementById(id)),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  };
  const out = document.createElement("pre");
  out.id = "page-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def open_in_browser(page, tmp_path) -> dict:
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1400,3000", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    found = re.search(r'<pre id="page-check">(.*?)</pre>', result.stdout)
    assert found, f"Chromium gave no result (exit {result.returncode}): {result.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_every_image_loads_and_every_anchor_resolves_in_the_report(tmp_path):
    from lofit_bench.engine.heads import HEADS_FILE, HeadSelection

    runs = tmp_path / "runs"
    full_folder(runs, methods=["lofit", "lora", "zero-shot"], tasks=["clutrr", "mquake"])
    record = fake_record("iti", 1, 0.3)
    record["artifacts"] = "artifacts/iti-1"
    (runs / record["artifacts"] / "main").mkdir(parents=True)
    HeadSelection(source="iti", chosen=[(1, 2)], shape={"n_layers": 4, "n_heads": 4, "head_dim": 8},
                  ranking=[(layer, head, float(layer * head)) for layer in range(4) for head in range(4)]
                  ).save(runs / record["artifacts"] / "main" / HEADS_FILE)
    write_json_atomic(runs / "records" / "iti.json", record)
    assert main(["report", str(runs)]) == 0
    checked = open_in_browser(runs / "report.html", tmp_path)
    assert checked["broken"] == [] and checked["unresolved"] == [] and checked["overflow"] <= 0
    assert checked["images"] == 6  # bars, two scatters, tuning, training and the heatmap
    assert checked["links"] >= 12  # the table of contents, the summary's tasks, the warnings' details, the heatmap's


def test_every_image_loads_and_every_anchor_resolves_in_the_comparison(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, [fake_record("lora", 1, 0.5, model="model-a"), fake_record("lofit", 1, 0.3, model="model-a")])
    write(b, [fake_record("lora", 1, 0.2, model="model-b"), fake_record("lofit", 1, 0.4, model="model-b")])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    checked = open_in_browser(tmp_path / "out" / "comparison.html", tmp_path)
    assert checked["images"] == 1 and checked["broken"] == [] and checked["unresolved"] == [] and checked["overflow"] <= 0
    assert checked["links"] == 2
