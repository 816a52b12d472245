# SPDX-License-Identifier: Apache-2.0
"""The command-line options tools/finetune.py and tools/zeroshot.py share:
the library, the `distrattn` program, the work folder, the report and its
raw results."""
import os

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_run_args(ap, work, out, json_help):
    """Adds --lib, --tool, --work, --out and --json to the ArgumentParser `ap`:
    `work` the default work folder, `out` the default report (relative to the
    source tree's top), `json_help` --json's help."""
    ap.add_argument("--lib", default=os.environ.get("DISTRATTN_LIB",
                                                    os.path.join(TOP, "build/lib/.libs/"
                                                                 "libdistrattn.so")))
    ap.add_argument("--tool", default=os.path.join(TOP, "build/tools/distrattn"))
    ap.add_argument("--work", default=work)
    ap.add_argument("--out", default=os.path.join(TOP, out))
    ap.add_argument("--json", default=None, help=json_help)
