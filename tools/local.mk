# SPDX-License-Identifier: Apache-2.0
# tools/: the distrattn command-line program (public API only).
bin_PROGRAMS += tools/distrattn
tools_distrattn_SOURCES = tools/main.c tools/util.c tools/util.h tools/cmd_devices.c \
	tools/cmd_run.c tools/cmd_demo.c tools/cmd_check.c tools/cmd_bench.c tools/cmd_eval.c \
	tools/capture_io.c tools/capture_io.h tools/cmd_calibrate.c tools/calib.c tools/calib.h
# Only the public header: the program is a client of the installed API.
# DA_PKGDATADIR: where the installed data (the demo capture below) lies.
tools_distrattn_CPPFLAGS = -I$(top_srcdir)/include -DDA_PKGDATADIR='"$(pkgdatadir)"'
tools_distrattn_LDADD = lib/libdistrattn.la -lm
# Real-model accuracy (issue 5): the capture and end-to-end scripts and the
# capture format; `distrattn eval` reads the captures.
EXTRA_DIST += tools/capture.py tools/e2e.py tools/finetune.py tools/zeroshot.py tools/common_args.py \
	tools/CAPTURE_FORMAT.md tools/PROJ_FORMAT.md
# The demo capture (SmolLM2-135M, causal, GQA, one entry of 1024 tokens of
# prose, 3 layers, f16; tools/capture.py --model smollm2 --demo), in the
# tarball and installed as $(pkgdatadir)/smollm2-demo.dattncap
# (CAPTURE_DEMO_FILE in DA_PKGDATADIR, tools/capture_io.h).
dist_pkgdata_DATA = data/smollm2-demo.dattncap
