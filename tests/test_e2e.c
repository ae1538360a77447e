/* End-to-end jobs on the real program: bin/dsv4-batch submit + run as real
 * processes, on lavapipe with the demo model (DeepSeek-V4 architecture, the
 * real tokenizer, random weights), with real inputs (a PDF made by
 * groff/ghostscript, a zip made by zip, text, HTML, a corrupt PDF), a real
 * SQLite job store and the real prefix cache. Workers are killed with
 * SIGKILL in the middle of prefill and of decoding, and the job must still
 * finish with exactly one result per query.
 *
 * The demo model is generated once into a shared directory; each case gets
 * its own home (job store and cache) whose models/ links to it. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vulkan/vulkan.h>

#include "jobs/dsv4_jobs.h"
#include "pipeline/demo_model.h"
#include "tests/check.h"

static char root[256];         /* the test's temporary directory (mkdtemp) */
static char inputs[512];       /* root/inputs */
static int have_device;

static int sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* A new home for one case, sharing the generated demo model. */
static void make_home(const char *name, char *home, size_t cap)
{
    snprintf(home, cap, "%.256s/%.64s", root, name);
    mkdir(home, 0700);
    char link[PATH_MAX + 16], target[PATH_MAX + 16];
    snprintf(link, sizeof link, "%s/models", home);
    snprintf(target, sizeof target, "%s/shared/models", root);
    if (symlink(target, link) != 0 && errno != EEXIST) perror("symlink");
}

/* Writes ROOT/NAME.yaml for the inputs with the given extra YAML. */
static void write_job(const char *path, const char *name, const char *context, int max_new, int span,
                      const char *extra_inputs)
{
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f,
            "name: %s\n"
            "inputs:\n"
            "  - path: %s/contract.pdf\n"
            "  - path: %s/notes.txt\n"
            "  - path: %s/bundle.zip\n"
            "%s"
            "context: %s\n"
            "system: You are a careful analyst.\n"
            "queries:\n"
            "  - id: q-termination\n"
            "    prompt: Which notice periods apply to termination?\n"
            "  - id: q-fees\n"
            "    prompt: What fees are due?\n"
            "  - id: q-data\n"
            "    prompt: How fast must a breach be reported?\n"
            "generation: { max_new_tokens: %d, temperature: 0.8, top_p: 0.9, seed: 3 }\n"
            "cache: { enabled: true, span_tokens: %d }\n"
            "output:\n"
            "  jsonl: %s/out/{name}.jsonl\n",
            name, inputs, inputs, inputs, extra_inputs ? extra_inputs : "", context, max_new, span, root);
    fclose(f);
}

static int64_t submit(const char *home, const char *job)
{
    char cmd[PATH_MAX * 3];
    snprintf(cmd, sizeof cmd, "bin/dsv4-batch submit --home %s %s", home, job);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    long long id = -1;
    if (fscanf(p, "%lld", &id) != 1) id = -1;
    pclose(p);
    return id;
}

static pid_t spawn_worker(const char *home, const char *lease_s, const char *prefill_chunk)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        if (prefill_chunk) setenv("DSV4_PREFILL_CHUNK", prefill_chunk, 1);
        execl("bin/dsv4-batch", "bin/dsv4-batch", "run", "--home", home, "--until-idle", "--lease", lease_s,
              "--quiet", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int wait_worker(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static dsv4_jobs *open_db(const char *home)
{
    char path[PATH_MAX + 16], err[256];
    snprintf(path, sizeof path, "%s/jobs.db", home);
    dsv4_jobs *db = NULL;
    if (dsv4_jobs_open(path, &db, err, sizeof err) != 0) printf("  %s\n", err);
    return db;
}

/* done of the job's progress record for stage, or -1. */
static double progress_of(dsv4_jobs *db, int64_t job, const char *stage)
{
    dsv4_job_progress *p = NULL;
    size_t n = 0;
    double done = -1;
    if (dsv4_jobs_progress(db, job, &p, &n, NULL, 0) != 0) return -1;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(p[i].stage, stage)) done = p[i].done;
    dsv4_jobs_progress_free(p, n);
    return done;
}

static int count_events(dsv4_jobs *db, int64_t job, const char *level, const char *needle)
{
    dsv4_job_event *ev = NULL;
    size_t n = 0;
    int c = 0;
    if (dsv4_jobs_events(db, job, 0, 0, &ev, &n, NULL, 0) != 0) return -1;
    for (size_t i = 0; i < n; i++)
        if ((!level || !strcmp(ev[i].level, level)) && strstr(ev[i].message, needle)) c++;
    dsv4_jobs_events_free(ev, n);
    return c;
}

/* Checks a finished job: succeeded, one result per query with real text. */
static void check_complete(dsv4_jobs *db, int64_t job, dsv4_job_result **res, size_t *n)
{
    dsv4_job_info info = {0};
    CHECK(dsv4_jobs_get(db, job, &info, NULL, 0) == 0);
    CHECKF(info.state == DSV4_JOB_SUCCEEDED, "job %lld is %s (%s)", (long long)job, dsv4_job_state_name(info.state),
           info.error ? info.error : "");
    dsv4_job_info_clear(&info);
    *res = NULL;
    *n = 0;
    CHECK(dsv4_jobs_results(db, job, res, n, NULL, 0) == 0);
    CHECKF(*n == 3, "%zu results", *n);
    for (size_t i = 0; i < *n; i++) {
        dsv4_job_result *r = &(*res)[i];
        CHECK(r->error == NULL && r->text != NULL);
        CHECK(r->generated_tokens >= 1 && r->generated_tokens <= 8);
        CHECK(r->prompt_tokens > r->cached_tokens);
        for (size_t k = 0; k < i; k++) CHECK(strcmp(r->query_id, (*res)[k].query_id) != 0);
    }
}

/* A job over a PDF, a text file, a zip with HTML inside and a corrupt PDF,
 * three questions: it succeeds, warns about the corrupt file, writes
 * output.jsonl with one line per query; the same job again restores the
 * whole shared prefix from the cache and answers the same. */
static void job_end_to_end_then_cache_hit(void)
{
    if (!have_device) SKIP("no Vulkan device");
    char home[PATH_MAX], job[PATH_MAX + 32];
    make_home("e2e", home, sizeof home);
    snprintf(job, sizeof job, "%s/e2e.yaml", root);
    char corrupt[PATH_MAX + 64];
    snprintf(corrupt, sizeof corrupt, "  - path: %s/broken.pdf\n", inputs);
    write_job(job, "e2e", "{ max_tokens: 20000, order: path, on_overflow: error }", 4, 128, corrupt);

    int64_t id1 = submit(home, job);
    CHECK(id1 > 0);
    CHECK(wait_worker(spawn_worker(home, "30", NULL)) == 0);
    dsv4_jobs *db = open_db(home);
    if (!db) return;
    dsv4_job_result *r1 = NULL, *r2 = NULL;
    size_t n1 = 0, n2 = 0;
    check_complete(db, id1, &r1, &n1);
    for (size_t i = 0; i < n1; i++) CHECKF(r1[i].cached_tokens == 0, "first run cached %lld", (long long)r1[i].cached_tokens);
    CHECKF(count_events(db, id1, "warn", "broken.pdf") >= 1, "no warning names the corrupt input");
    CHECK(count_events(db, id1, NULL, "contract.pdf") == 0); /* the good PDF raised nothing */
    char out[PATH_MAX + 32];
    snprintf(out, sizeof out, "%s/out/e2e.jsonl", root);
    CHECK(sh("test $(grep -c '\"custom_id\"' %s) -eq 3", out) == 0);
    CHECK(sh("grep -q '\"custom_id\": *\"q-fees\"' %s", out) == 0);

    /* The same job again: the shared prefix comes from the cache. */
    int64_t id2 = submit(home, job);
    CHECK(wait_worker(spawn_worker(home, "30", NULL)) == 0);
    check_complete(db, id2, &r2, &n2);
    for (size_t i = 0; i < n1 && i < n2; i++) {
        CHECK(strcmp(r2[i].query_id, r1[i].query_id) == 0);
        CHECK(r2[i].prompt_tokens == r1[i].prompt_tokens);
        CHECKF(r2[i].cached_tokens > 0 && r2[i].cached_tokens + 64 > r2[i].prompt_tokens,
               "second run: %lld of %lld prompt tokens cached", (long long)r2[i].cached_tokens,
               (long long)r2[i].prompt_tokens);
        /* Same state, same seed: the same answer. */
        CHECKF(strcmp(r1[i].text, r2[i].text) == 0, "answers differ: '%s' vs '%s'", r1[i].text, r2[i].text);
    }
    CHECK(count_events(db, id2, "info", "cache hit") == 1);
    CHECK(count_events(db, id2, "info", "prefilled") == 0); /* nothing left to prefill */
    dsv4_jobs_results_free(r1, n1);
    dsv4_jobs_results_free(r2, n2);
    dsv4_jobs_close(db);
}

/* Kills the worker with SIGKILL once stage has made progress past
 * threshold, then lets a second worker resume after the lease expires. */
static void kill_and_resume(const char *name, const char *stage, double threshold, int max_new)
{
    if (!have_device) SKIP("no Vulkan device");
    char home[PATH_MAX], job[PATH_MAX + 32];
    make_home(name, home, sizeof home);
    snprintf(job, sizeof job, "%s/%s.yaml", root, name);
    write_job(job, name, "{ max_tokens: 20000 }", max_new, 128, NULL);
    int64_t id = submit(home, job);
    CHECK(id > 0);
    dsv4_jobs *db = open_db(home);
    if (!db) return;
    pid_t w = spawn_worker(home, "2", "64");
    int killed = 0;
    for (int i = 0; i < 6000 && !killed; i++) {
        if (progress_of(db, id, stage) > threshold) {
            kill(w, SIGKILL);
            killed = 1;
        } else {
            int st;
            if (waitpid(w, &st, WNOHANG) == w) break; /* finished before the kill point */
            usleep(50 * 1000);
        }
    }
    CHECKF(killed, "the worker was never seen in %s past %.0f", stage, threshold);
    if (killed) wait_worker(w);
    dsv4_job_result *r = NULL;
    size_t n = 0;
    dsv4_jobs_results(db, id, &r, &n, NULL, 0);
    size_t before = n;
    dsv4_jobs_results_free(r, n);
    CHECKF(before < 3, "%zu results before the resume: the kill came too late", before);

    sleep(3); /* the dead worker's 2 s lease expires */
    CHECK(wait_worker(spawn_worker(home, "30", "64")) == 0);
    check_complete(db, id, &r, &n);
    dsv4_job_info info = {0};
    dsv4_jobs_get(db, id, &info, NULL, 0);
    CHECKF(info.attempts == 2, "attempts %d", info.attempts);
    dsv4_job_info_clear(&info);
    /* The resumed run restored what the killed run had cached. */
    for (size_t i = 0; i < n; i++) CHECKF(r[i].cached_tokens >= 128, "resumed with %lld cached tokens", (long long)r[i].cached_tokens);
    dsv4_jobs_results_free(r, n);
    dsv4_jobs_close(db);
}

static void kill9_during_prefill_resumes(void)
{
    kill_and_resume("killprefill", "prefill", 200, 4);
}

static void kill9_during_decode_resumes(void)
{
    kill_and_resume("killdecode", "decode", 0.5, 8);
}

/* A context over max_tokens: on_overflow error fails the job with a message
 * naming the limit; truncate drops documents, warns, and succeeds. */
static void context_overflow_error_and_truncate(void)
{
    if (!have_device) SKIP("no Vulkan device");
    char home[PATH_MAX], job[PATH_MAX + 32];
    make_home("overflow", home, sizeof home);
    snprintf(job, sizeof job, "%s/overflow.yaml", root);
    write_job(job, "overflow", "{ max_tokens: 150, on_overflow: error }", 1, 128, NULL);
    int64_t id = submit(home, job);
    CHECK(wait_worker(spawn_worker(home, "30", NULL)) == 1);
    dsv4_jobs *db = open_db(home);
    if (!db) return;
    dsv4_job_info info = {0};
    CHECK(dsv4_jobs_get(db, id, &info, NULL, 0) == 0);
    CHECK(info.state == DSV4_JOB_FAILED);
    CHECKF(info.error && strstr(info.error, "over context.max_tokens 150") && strstr(info.error, "on_overflow"),
           "error: %s", info.error ? info.error : "(none)");
    dsv4_job_info_clear(&info);

    write_job(job, "overflow", "{ max_tokens: 150, on_overflow: truncate }", 1, 128, NULL);
    id = submit(home, job);
    CHECK(wait_worker(spawn_worker(home, "30", NULL)) == 0);
    CHECK(dsv4_jobs_get(db, id, &info, NULL, 0) == 0);
    CHECK(info.state == DSV4_JOB_SUCCEEDED);
    dsv4_job_info_clear(&info);
    CHECK(count_events(db, id, "warn", "context.max_tokens 150 reached: dropped") >= 1);
    dsv4_jobs_close(db);
}

static int vulkan_device_present(void)
{
    VkInstanceCreateInfo ci;
    memset(&ci, 0, sizeof ci);
    ci.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
    VkInstance inst;
    if (vkCreateInstance(&ci, NULL, &inst) != VK_SUCCESS) return 0;
    uint32_t n = 0;
    vkEnumeratePhysicalDevices(inst, &n, NULL);
    vkDestroyInstance(inst, NULL);
    return n > 0;
}

static int setup(void)
{
    snprintf(root, sizeof root, "/tmp/dsv4-e2e-XXXXXX");
    if (!mkdtemp(root)) return -1;
    snprintf(inputs, sizeof inputs, "%s/inputs", root);
    mkdir(inputs, 0755);
    char dir[PATH_MAX + 32], err[512], model[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/shared", root);
    mkdir(dir, 0755);
    if (dsv4_demo_model_ensure(dir, model, sizeof model, err, sizeof err) != 0) {
        printf("  demo model: %s\n", err);
        return -1;
    }
    /* Real inputs: a PDF made by groff and ghostscript (examples/make-inputs.sh),
     * a zip made by zip, plain text, and a PDF cut in half. */
    if (sh("cp examples/inputs/contracts/globex-data-processing.pdf %s/contract.pdf", inputs) != 0) return -1;
    if (sh("head -c 6000 examples/inputs/contracts/acme-master-services.pdf > %s/broken.pdf", inputs) != 0) return -1;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/notes.txt", inputs);
    write_file(path, "Meeting notes, 4 May.\nThe lease ends after 24 months; early exit needs 30 days' notice.\n"
                     "Support fees are USD 42,000 a year, payable quarterly.\n");
    snprintf(path, sizeof path, "%s/lease.html", inputs);
    write_file(path, "<html><body><h1>Lease</h1><p>Monthly rental GBP 1,240.</p>"
                     "<script>ignored()</script><ul><li>Deposit GBP 2,480</li></ul></body></html>\n");
    if (sh("cd %s && zip -q -X bundle.zip lease.html && rm lease.html", inputs) != 0) return -1;
    return 0;
}

int main(void)
{
    have_device = vulkan_device_present();
    if (have_device && setup() != 0) {
        printf("FAIL setup\n");
        return 1;
    }
    RUN(job_end_to_end_then_cache_hit);
    RUN(kill9_during_prefill_resumes);
    RUN(kill9_during_decode_resumes);
    RUN(context_overflow_error_and_truncate);
    if (root[0] && !getenv("DSV4_KEEP_TMP")) sh("rm -rf %s", root);
    CHECK_EXIT();
}
