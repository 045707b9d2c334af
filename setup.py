"""Build yimmo and its C extension, yimmo._yimmo.

Environment switches (documented in docs/building.md):
  YIMMO_DEBUG=1   -O0 -g with AddressSanitizer and UndefinedBehaviorSanitizer.
  YIMMO_FUZZ=1    clang, -O1 -g with libFuzzer coverage (fuzzer-no-link), ASan
                  and UBSan: the build fuzz/run.sh runs the harnesses against.
  YIMMO_COVERAGE=1  gcc --coverage -fprofile-update=atomic -O0 -g, for scripts/coverage.sh.
  YIMMO_CFLAGS    extra compiler flags appended last.
"""
import glob
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def die(msg):
    sys.stderr.write("yimmo build error: %s\n" % msg)
    sys.exit(1)


def pkg_config(name):
    """Return (cflags, libs) from pkg-config, or None if it does not know name."""
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", name],
                             capture_output=True, text=True, check=False)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return shlex.split(out.stdout)


def have_header(header, include_dirs):
    dirs = list(include_dirs) + ["/usr/include", "/usr/local/include",
                                 "/opt/homebrew/include"]
    return any(os.path.exists(os.path.join(d, header)) for d in dirs)


def find_library(name, pcname, header, debian_pkg):
    flags = pkg_config(pcname) if pcname else None
    if flags is not None:
        return flags
    # libev ships no pkg-config file on Debian: look for its header.
    if have_header(header, []):
        return ["-l" + name]
    die("%s not found (no %s). On Debian/Ubuntu: apt-get install %s"
        % (name, header, debian_pkg))


def extension():
    sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
    flags = []
    flags += find_library("ev", None, "ev.h", "libev-dev")
    flags += find_library("ssl", "openssl", "openssl/ssl.h", "libssl-dev")
    flags += find_library("z", "zlib", "zlib.h", "zlib1g-dev")
    cflags = [f for f in flags if not f.startswith(("-l", "-L"))]
    libs = [f[2:] for f in flags if f.startswith("-l")]
    libdirs = [f[2:] for f in flags if f.startswith("-L")]

    extra_compile = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                     "-Wno-missing-field-initializers", "-fvisibility=hidden"]
    extra_link = []
    if os.environ.get("YIMMO_FUZZ") == "1":
        # libFuzzer and the sanitizer runtimes are not linked in: fuzz/run.sh
        # preloads them, merged, as atheris documents for native extensions.
        os.environ.setdefault("CC", "clang")
        san = ["-fsanitize=fuzzer-no-link,address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        extra_compile += ["-O1", "-g", "-DYMO_DEBUG=1"] + san
        extra_link += san
    elif os.environ.get("YIMMO_COVERAGE") == "1":
        # Atomic counters: the loop and worker threads run the same code at
        # once, and racing increments leave gcov with negative branch counts.
        extra_compile += ["--coverage", "-fprofile-update=atomic", "-O0", "-g"]
        extra_link += ["--coverage"]
    elif os.environ.get("YIMMO_DEBUG") == "1":
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        extra_compile += ["-O0", "-g3", "-DYMO_DEBUG=1"] + san
        extra_link += san
    else:
        extra_compile += ["-O2"]
    extra_compile += shlex.split(os.environ.get("YIMMO_CFLAGS", ""))
    return Extension(
        "yimmo._yimmo",
        sources=sources,
        include_dirs=["include", "csrc"],
        define_macros=[("_GNU_SOURCE", "1")],
        libraries=libs,
        library_dirs=libdirs,
        extra_compile_args=cflags + extra_compile,
        extra_link_args=extra_link,
        depends=sorted(glob.glob("include/**/*.h", recursive=True)
                       + glob.glob("csrc/**/*.h", recursive=True)),
    )


setup(ext_modules=[extension()])
