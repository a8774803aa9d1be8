"""vmp-bench: run one benchmark (each writes a results record, JSON under results/) or regenerate the results page
(docs/results.md).

    vmp-bench latency [--device cuda]     action-chunk latency per head and sampler
    vmp-bench sampler                     training data throughput (windows/s)
    vmp-bench render                      simulation frames per second, default vs fast render settings
    vmp-bench deploy                      control-loop jitter and observation-to-action latency
    vmp-bench scaleout                    episodes/min on Ray vs local workers; training data from S3 vs disk
    vmp-bench lerobot                     our heads against LeRobot's Diffusion Policy and ACT (same data, seeds, budget)
    vmp-bench report                      rewrite docs/results.md's tables and plots from results/*.json
    vmp-bench suite=quick | suite=full    all of the above in one command (quick: ~10 min on 2 CPU cores), then report
    vmp-bench soak [--minutes 60]         vmp-deploy under faults (not in the suite): stops, recording, memory, threads
    vmp-bench pad-probe --checkpoint R    whether a PAD run's actions use the future frames it predicts (not in the suite)
    vmp-bench encoder-probe --checkpoint R  whether an image run's camera features carry the object's pose (not in
                                          the suite)
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {"latency": "vmp.bench.latency", "sampler": "vmp.bench.sampler", "render": "vmp.bench.render",
            "deploy": "vmp.bench.deploy", "scaleout": "vmp.bench.scaleout", "report": "vmp.bench.report", "lerobot": "vmp.bench.lerobot",
            "pad-probe": "vmp.bench.pad_probe", "encoder-probe": "vmp.bench.encoder_probe",
            "suite": "vmp.bench.suite", "soak": "vmp.bench.soak"}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) >= 2 and sys.argv[1].startswith("suite="):  # hydra-style spelling: vmp-bench suite=quick
        sys.argv[1:2] = ["suite", sys.argv[1].split("=", 1)[1]]
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help") or sys.argv[1] not in COMMANDS:
        print(__doc__)
        if len(sys.argv) >= 2 and sys.argv[1] not in ("-h", "--help"):
            print(f"unknown benchmark {sys.argv[1]!r}; choose one of {sorted(COMMANDS)}")
            sys.exit(2)
        return
    importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
