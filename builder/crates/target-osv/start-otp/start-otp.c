/*
 * start-otp.so: beambake's loader for an Erlang release on OSv.
 *
 * OSv runs one program in one address space: an application is a shared object whose
 * main() OSv calls. This loader is that program. Its command line is rebar3_osv's:
 *
 *     /start-otp.so [--verbose] REL VMARGS SYSCONFIG [ARGS...]
 *
 * REL is the release's boot file without ".boot", VMARGS its vm.args, SYSCONFIG its
 * sys.config. The program, its arguments, environment and working directory come from
 * the launch spec beambake computed for the release (the same spec the Linux init
 * runs), written as lines at LAUNCH_LINES (see beambake_contract::launch::to_lines):
 *
 *     cwd DIR | env NAME=VALUE | arg VALUE
 *
 * The loader checks that the spec starts REL (its -boot), that VMARGS and SYSCONFIG
 * exist, sets the environment (values already set, e.g. by OSv's --env=, win), puts
 * $BEAMBAKE_NODE after -name/-sname when set (each VM's own node name), inserts ARGS
 * before the spec's final "--" (or "-extra"), dlopen()s argv[0] (erlexec built with
 * beambake's osv patch set: it exports erlexec_main, runs epmd on a thread and the
 * emulator in this same process) and calls it. Its status is the loader's.
 *
 * Must not: compute any part of the command line itself (the builder does, once).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LAUNCH_LINES
#define LAUNCH_LINES "/etc/beambake/launch.lines"
#endif

#define MAX_ARGS 1024

static int verbose;

static void say(const char *what, const char *detail)
{
    fprintf(stderr, "start-otp: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
}

static int usage(void)
{
    say("usage: /start-otp.so [--verbose] REL VMARGS SYSCONFIG [ARGS...]", NULL);
    return 64;
}

/* Reads LAUNCH_LINES: sets the environment, fills argv (NULL-terminated), returns argc,
 * or -1 after saying why. */
static int read_spec(char **argv, char **cwd)
{
    FILE *f = fopen(LAUNCH_LINES, "r");
    if (!f) {
        fprintf(stderr, "start-otp: %s: %s (not an image made by beambake?)\n", LAUNCH_LINES,
                strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int argc = 0, lineno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        if (strncmp(line, "arg ", 4) == 0) {
            if (argc >= MAX_ARGS - 1) {
                fprintf(stderr, "start-otp: %s: more than %d arguments\n", LAUNCH_LINES, MAX_ARGS - 1);
                goto bad;
            }
            argv[argc++] = strdup(line + 4);
        } else if (strncmp(line, "env ", 4) == 0) {
            char *eq = strchr(line + 4, '=');
            if (!eq || eq == line + 4) {
                fprintf(stderr, "start-otp: %s:%d: not NAME=VALUE\n", LAUNCH_LINES, lineno);
                goto bad;
            }
            *eq = '\0';
            if (setenv(line + 4, eq + 1, 0) != 0) {
                fprintf(stderr, "start-otp: setenv %s: %s\n", line + 4, strerror(errno));
                goto bad;
            }
            if (verbose)
                fprintf(stderr, "start-otp: env %s=%s\n", line + 4, getenv(line + 4));
        } else if (strncmp(line, "cwd ", 4) == 0) {
            *cwd = strdup(line + 4);
        } else if (n > 0) {
            fprintf(stderr, "start-otp: %s:%d: unknown line\n", LAUNCH_LINES, lineno);
            goto bad;
        }
    }
    free(line);
    fclose(f);
    argv[argc] = NULL;
    if (argc == 0) {
        fprintf(stderr, "start-otp: %s: no arguments\n", LAUNCH_LINES);
        return -1;
    }
    return argc;
bad:
    free(line);
    fclose(f);
    return -1;
}

/* The value after FLAG in argv, or NULL. */
static char **value_of(char **argv, int argc, const char *flag)
{
    for (int i = 0; i + 1 < argc; i++)
        if (strcmp(argv[i], flag) == 0)
            return &argv[i + 1];
    return NULL;
}

static int readable(const char *what, const char *path)
{
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "start-otp: %s %s: %s\n", what, path, strerror(errno));
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    int a = 1;
    if (a < argc && strcmp(argv[a], "--verbose") == 0) {
        verbose = 1;
        a++;
    }
    if (argc - a < 3)
        return usage();
    const char *rel = argv[a], *vmargs = argv[a + 1], *sysconfig = argv[a + 2];
    a += 3;

    static char *eargv[MAX_ARGS + 1];
    char *cwd = NULL;
    int eargc = read_spec(eargv, &cwd);
    if (eargc < 0)
        return 70;

    char **boot = value_of(eargv, eargc, "-boot");
    if (!boot || strcmp(*boot, rel) != 0) {
        fprintf(stderr, "start-otp: the image's launch spec boots %s, not %s\n",
                boot ? *boot : "(no -boot)", rel);
        return 65;
    }
    char boot_file[4096];
    snprintf(boot_file, sizeof boot_file, "%s.boot", rel);
    if (!readable("boot file", boot_file) || !readable("vm.args", vmargs) ||
        !readable("sys.config", sysconfig))
        return 66;

    const char *node = getenv("BEAMBAKE_NODE");
    if (node && *node) {
        char **v = value_of(eargv, eargc, "-name");
        if (!v)
            v = value_of(eargv, eargc, "-sname");
        if (v)
            *v = (char *)node;
        else
            say("BEAMBAKE_NODE is set but the release is not distributed", node);
    }

    /* ARGS go before the spec's final "--" / "-extra" (after it they would be plain
     * arguments). */
    int extra = argc - a;
    if (eargc + extra > MAX_ARGS) {
        say("too many arguments", NULL);
        return 64;
    }
    int at = eargc;
    for (int i = eargc - 1; i > 0; i--)
        if (strcmp(eargv[i], "--") == 0 || strcmp(eargv[i], "-extra") == 0) {
            at = i;
            break;
        }
    memmove(&eargv[at + extra], &eargv[at], (eargc - at + 1) * sizeof(char *));
    for (int i = 0; i < extra; i++)
        eargv[at + i] = argv[a + i];
    eargc += extra;

    if (cwd && chdir(cwd) != 0) {
        fprintf(stderr, "start-otp: chdir %s: %s\n", cwd, strerror(errno));
        return 70;
    }
    if (verbose)
        for (int i = 0; i < eargc; i++)
            fprintf(stderr, "start-otp: argv[%d] %s\n", i, eargv[i]);

    void *h = dlopen(eargv[0], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "start-otp: dlopen %s: %s\n", eargv[0], dlerror());
        return 69;
    }
    int (*entry)(int, char **) = (int (*)(int, char **))dlsym(h, "erlexec_main");
    if (!entry) {
        fprintf(stderr,
                "start-otp: %s has no erlexec_main: not an erlexec built with beambake's osv "
                "patch set (cargo xtask otp-build --set osv)\n",
                eargv[0]);
        return 69;
    }
    return entry(eargc, eargv);
}
