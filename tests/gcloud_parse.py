# Runs many gcloud command lines in one process, each as a gcloud process of its own would.
#
# tests/deploy/gcloud_parse.rs runs this with gcloud's Python, started as bin/gcloud starts it,
# with the SDK's lib/ on sys.path; sys.argv[2] is a file with a JSON list of argument lists
# (without "gcloud"). It prints a JSON list: for each command line, its exit status and what it
# printed on stdout and stderr.
#
# A gcloud process spends about a second of CPU loading before it parses anything; here that is
# paid once. The CLI is built once (gcloud_main.CreateCLI), and each command line goes, as
# sys.argv, to gcloud_main.main: the function that lib/gcloud.py, gcloud's entry point, calls.
# What a command prints is read from file descriptors 1 and 2, whoever writes it. The properties
# that flags set belong to one invocation: calliope pushes them before it and pops them after (and
# resets what it caches between commands, for test runs that reuse one CLI).
# tests/deploy/gcloud_parse.rs checks that a command ends here exactly as in a gcloud process of
# its own.
import atexit, json, os, sys, tempfile

with open(sys.argv[2]) as file:
    argvs = json.load(file)
sys.argv = ["gcloud"]
import gcloud  # lib/gcloud.py

sys.path = gcloud.reorder_sys_path(sys.path)
gcloud._fix_google_module()
gcloud_main = gcloud._import_gcloud_main()
cli = gcloud_main.CreateCLI([])


def run(argv):
    sys.argv = ["gcloud"] + argv
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    saved = [os.dup(1), os.dup(2)]
    for fd, file in enumerate(files, 1):
        os.dup2(file.fileno(), fd)
    try:
        gcloud_main.main(gcloud_cli=cli)
        code = 0
    except SystemExit as exit:  # as Python ends a process with it
        code = exit.code if isinstance(exit.code, int) or exit.code is None else 1
        if code is not exit.code:
            print(exit.code, file=sys.stderr)
        code = code or 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in enumerate(saved, 1):
            os.dup2(old, fd)
            os.close(old)
        # main() registers gcloud's metrics flush for exit at each call.
        atexit.unregister(gcloud_main.metrics.Shutdown)
    printed = []
    for file in files:
        file.seek(0)
        printed.append(file.read().decode("utf-8", "replace"))
        file.close()
    return {"code": code, "stdout": printed[0], "stderr": printed[1]}


print(json.dumps([run(argv) for argv in argvs]))
