/* ingest/ archives: every format made at test time by its real tool (zip,
 * bsdtar with gz/bz2/xz/zstd/lz4, 7z, ar, cpio, gzip), nesting to the depth
 * limit, each guard (entries, entry bytes declared and streamed, input bytes,
 * ratio, depth), a 10 GiB zstd bomb read by the real CLI process with its
 * peak RSS measured, encrypted entries, corrupt and truncated archives, and
 * hostile names (non-UTF-8, absolute, `..`, links). */
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "tests/check.h"
#include "tests/test_ingest_util.h"

static char *dir;

static const char *P(const char *name)
{
    static char p[8][600];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

static void expect_ab(const char *archive, const char *a_name, const char *b_name)
{
    collected c;
    int rc = ingest_collect(P(archive), NULL, 0, 0, NULL, &c);
    CHECKF(rc == DSV4_INGEST_OK, "%s: rc %d", archive, rc);
    char na[700], nb[700];
    snprintf(na, sizeof na, "%s :: %s", P(archive), a_name);
    snprintf(nb, sizeof nb, "%s :: %s", P(archive), b_name);
    const dsv4_doc *a = find_doc(&c, na), *b = find_doc(&c, nb);
    CHECKF(a && strcmp(a->text, "alpha\n") == 0, "%s: %s", archive, na);
    CHECKF(b && strcmp(b->text, "beta\n") == 0, "%s: %s", archive, nb);
    if (!a || !b) dump_collected(&c);
    collected_free(&c);
}

static void every_format(void)
{
    CHECK(sh("cd %s/src && zip -q -r ../f.zip a.txt sub && bsdtar -czf ../f.tar.gz a.txt sub && "
             "bsdtar -cjf ../f.tar.bz2 a.txt sub && bsdtar -cJf ../f.tar.xz a.txt sub && "
             "bsdtar --zstd -cf ../f.tar.zst a.txt sub && bsdtar -cf - a.txt sub | lz4 -q > ../f.tar.lz4 && "
             "7z a -bd -bso0 ../f.7z a.txt sub && find a.txt sub | cpio -o -H newc --quiet > ../f.cpio && "
             "ar rc ../f.a a.txt sub/b.md && gzip -c a.txt > ../a.txt.gz",
             dir) == 0);
    expect_ab("f.zip", "a.txt", "sub/b.md");
    expect_ab("f.tar.gz", "a.txt", "sub/b.md");
    expect_ab("f.tar.bz2", "a.txt", "sub/b.md");
    expect_ab("f.tar.xz", "a.txt", "sub/b.md");
    expect_ab("f.tar.zst", "a.txt", "sub/b.md");
    expect_ab("f.tar.lz4", "a.txt", "sub/b.md");
    expect_ab("f.7z", "a.txt", "sub/b.md");
    expect_ab("f.cpio", "a.txt", "sub/b.md");
    expect_ab("f.a", "a.txt", "b.md");
    collected c;
    /* a .deb: ar holding xz tarballs, two levels */
    CHECK(sh("cd %s && mkdir -p deb/data && echo 2.0 > deb/debian-binary && echo readme > deb/data/README && "
             "cd deb && bsdtar -cJf control.tar.xz debian-binary && bsdtar -cJf data.tar.xz -C data . && "
             "ar rc ../x.deb debian-binary control.tar.xz data.tar.xz", dir) == 0);
    CHECK(ingest_collect(P("x.deb"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    char dn[700];
    snprintf(dn, sizeof dn, "%s :: data.tar.xz :: ./README", P("x.deb"));
    const dsv4_doc *dd = find_doc(&c, dn);
    CHECK(dd && strcmp(dd->text, "readme\n") == 0 && dd->chain_len == 2);
    collected_free(&c);
    CHECK(ingest_collect(P("a.txt.gz"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    char nm[700];
    snprintf(nm, sizeof nm, "%s :: a.txt", P("a.txt.gz"));
    CHECK(find_doc(&c, nm) != NULL);
    collected_free(&c);
    /* archives found in memory (an entry of nothing) work the same */
    size_t n;
    char *z = read_all(P("f.tar.xz"), &n);
    CHECK(ingest_collect("mem.tar.xz", z, n, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_OK);
    CHECK(find_doc(&c, "mem.tar.xz :: sub/b.md") != NULL);
    collected_free(&c);
    free(z);
}

static void nesting_and_depth_guard(void)
{
    CHECK(sh("cd %s/src && zip -q ../inner.zip a.txt && cd .. && bsdtar -czf mid.tar.gz inner.zip && "
             "zip -q outer.zip mid.tar.gz", dir) == 0);
    collected c;
    CHECK(ingest_collect(P("outer.zip"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    char nm[700];
    snprintf(nm, sizeof nm, "%s :: mid.tar.gz :: inner.zip :: a.txt", P("outer.zip"));
    const dsv4_doc *d = find_doc(&c, nm);
    CHECK(d && d->chain_len == 3 && strcmp(d->text, "alpha\n") == 0);
    collected_free(&c);
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    o.max_depth = 2;
    CHECK(ingest_collect(P("outer.zip"), NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0);
    CHECK(find_event(&c, DSV4_SKIP_GUARD, "outer.zip :: mid.tar.gz :: inner.zip", "over max_depth (2)") != NULL);
    collected_free(&c);
}

static void guards_entries_bytes_input(void)
{
    CHECK(sh("cd %s && mkdir -p many && for i in $(seq 1 20); do echo file $i > many/f$i.txt; done && "
             "zip -q -r many.zip many && head -c 100000 /dev/urandom | base64 > big.txt && zip -q big.zip big.txt && "
             "gzip -c big.txt > big.txt.gz && mkdir -p five && for i in 1 2 3 4 5; do head -c 50000 /dev/urandom | "
             "base64 > five/p$i.txt; done && bsdtar -czf five.tgz five", dir) == 0);
    dsv4_ingest_options o;
    collected c;
    dsv4_ingest_options_default(&o);
    o.max_entries = 5;
    CHECK(ingest_collect(P("many.zip"), NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE);
    CHECKF(c.n_docs == 4, "%zu docs", c.n_docs); /* the directory entry counts too */
    CHECK(find_event(&c, DSV4_SKIP_GUARD, "many.zip", "more than 5 entries, over max_entries") != NULL);
    collected_free(&c);

    dsv4_ingest_options_default(&o);
    o.max_entry_bytes = 10000;
    CHECK(ingest_collect(P("big.zip"), NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(find_event(&c, DSV4_SKIP_GUARD, "big.zip", "entry big.txt declares 13") != NULL);
    collected_free(&c);
    /* a gzip stream declares no size: the streamed count trips */
    CHECK(ingest_collect(P("big.txt.gz"), NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(find_event(&c, DSV4_SKIP_GUARD, "big.txt.gz", "more than 10000 bytes, over max_entry_bytes") != NULL);
    collected_free(&c);

    dsv4_ingest_options_default(&o);
    o.max_input_bytes = 150000;
    CHECK(ingest_collect(P("five.tgz"), NULL, 0, 0, &o, &c) == DSV4_INGEST_INCOMPLETE);
    CHECKF(c.n_docs == 2, "%zu docs", c.n_docs);
    CHECK(find_event(&c, DSV4_SKIP_GUARD, "five.tgz", "over max_input_bytes") != NULL);
    CHECK(c.st.n_skipped[DSV4_SKIP_GUARD] == 1);
    collected_free(&c);
}

static void ratio_guard_zip(void)
{
    CHECK(sh("cd %s && head -c 20M /dev/zero > zeros && zip -q zeros.zip zeros && rm zeros", dir) == 0);
    collected c;
    CHECK(ingest_collect(P("zeros.zip"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0);
    const tevent *e = find_event(&c, DSV4_SKIP_GUARD, "zeros.zip", "compression ratio over max_ratio (200)");
    CHECK(e != NULL);
    if (!e) dump_collected(&c);
    collected_free(&c);
}

/* 10 GiB of zeros as one zstd stream: 160 concatenated frames of 64 MiB,
 * each made by the zstd tool. The real CLI reads it; its peak RSS must stay
 * small because the ratio guard trips after a few MiB. */
static void zstd_bomb_keeps_rss_small(void)
{
    /* 'a' rather than zero bytes: a stream of zeros reads as an empty tar */
    CHECK(sh("cd %s && head -c 64M /dev/zero | tr '\\0' a | zstd -q -1 -c > frame.zst && "
             "test $(zstd -dc frame.zst | wc -c) = 67108864 && "
             "for i in $(seq 1 160); do cat frame.zst; done > bomb.zst && rm frame.zst", dir) == 0);
    const char *err_path = P("bomb.err");
    pid_t pid = fork();
    if (pid == 0) {
        FILE *e = freopen(err_path, "w", stderr);
        FILE *o = freopen("/dev/null", "w", stdout);
        (void)e, (void)o;
        execl("bin/dsv4-batch", "dsv4-batch", "ingest", P("bomb.zst"), (char *)NULL);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    CHECK(pid > 0 && wait4(pid, &status, 0, &ru) == pid);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
    long peak_kb = ru.ru_maxrss;
    printf("  dsv4-batch ingest on a 10 GiB zstd bomb: peak RSS %ld KiB\n", peak_kb);
    /* 20 MiB measured in a normal build, 49 MiB under AddressSanitizer
     * (shadow memory and quarantine); decompressing the bomb would be 10 GiB */
    long limit_kb = 64 * 1024;
#if defined(__SANITIZE_ADDRESS__)
    limit_kb = 160 * 1024;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    limit_kb = 160 * 1024;
#endif
#endif
    CHECKF(peak_kb < limit_kb, "peak RSS %ld KiB, limit %ld", peak_kb, limit_kb);
    char *err = read_all(err_path, NULL);
    CHECK(err && strstr(err, "input stopped:") && strstr(err, "over max_ratio (200)") && strstr(err, "bomb.zst"));
    if (err) printf("  stderr: %s", err);
    free(err);
    /* zeros are an empty tar archive to libarchive: reported, nothing read */
    collected c;
    CHECK(sh("cd %s && head -c 16M /dev/zero | zstd -q -1 -c > zeros.zst", dir) == 0);
    CHECK(ingest_collect(P("zeros.zst"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0 && find_event(&c, DSV4_SKIP_EMPTY, "zeros.zst", "no entries") != NULL);
    collected_free(&c);
}

static void encrypted_entries(void)
{
    CHECK(sh("cd %s/src && zip -q -P secret ../enc.zip a.txt && zip -q ../enc.zip sub/b.md && "
             "7z a -bd -bso0 -psecret -mhe=on ../enc.7z a.txt", dir) == 0);
    collected c;
    CHECK(ingest_collect(P("enc.zip"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    char nm[700];
    snprintf(nm, sizeof nm, "%s :: sub/b.md", P("enc.zip"));
    CHECK(find_doc(&c, nm) != NULL && c.n_docs == 1);
    CHECK(find_event(&c, DSV4_SKIP_ENCRYPTED, "enc.zip :: a.txt", "encrypted entry") != NULL);
    collected_free(&c);
    CHECK(ingest_collect(P("enc.7z"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(c.n_docs == 0);
    CHECK(c.st.n_skipped[DSV4_SKIP_ENCRYPTED] == 1);
    if (c.st.n_skipped[DSV4_SKIP_ENCRYPTED] != 1) dump_collected(&c);
    collected_free(&c);
}

static void corrupt_and_truncated(void)
{
    size_t n;
    char *tgz = read_all(P("five.tgz"), &n);
    CHECK(tgz != NULL);
    collected c;
    if (tgz) {
        int rc = ingest_collect("cut.tgz", tgz, n / 2, DSV4_FORMAT_AUTO, NULL, &c);
        CHECK(rc == DSV4_INGEST_INCOMPLETE);
        CHECK(c.n_docs < 5);
        CHECK(find_event(&c, DSV4_SKIP_CORRUPT, "cut.tgz", NULL) != NULL);
        collected_free(&c);
    }
    free(tgz);
    char *zip = read_all(P("many.zip"), &n);
    if (zip) {
        /* cut off the central directory: the zip reader stops with an error */
        int rc = ingest_collect("cut.zip", zip, n - 30, DSV4_FORMAT_AUTO, NULL, &c);
        CHECKF(rc == DSV4_INGEST_INCOMPLETE || rc == DSV4_INGEST_OK, "rc %d", rc);
        collected_free(&c);
        /* garbage after the magic */
        memset(zip + 4, 0xAB, n - 4);
        CHECK(ingest_collect("junk.zip", zip, n, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_INCOMPLETE);
        CHECK(c.n_docs == 0 && find_event(&c, DSV4_SKIP_CORRUPT, "junk.zip", NULL) != NULL);
        collected_free(&c);
    }
    free(zip);
    const char fake_gz[] = "\x1f\x8b\x08\x00garbage garbage";
    CHECK(ingest_collect("bad.gz", fake_gz, sizeof fake_gz - 1, DSV4_FORMAT_AUTO, NULL, &c) == DSV4_INGEST_INCOMPLETE);
    CHECK(find_event(&c, DSV4_SKIP_CORRUPT, "bad.gz", NULL) != NULL);
    collected_free(&c);
}

static void hostile_names_and_links(void)
{
    CHECK(sh("cd %s/src && printf 'latin\\n' > \"$(printf 'caf\\351.txt')\" && "
             "bsdtar --format=ustar -cf ../names.tar \"$(printf 'caf\\351.txt')\" && "
             "bsdtar -P -cf ../dots.tar -s ',^,../../etc/,' a.txt && bsdtar -P -cf ../abs.tar -s ',^,/etc/,' sub/b.md && "
             "ln -sf /etc/passwd link && ln -f a.txt hard.txt && bsdtar -cf ../links.tar link a.txt hard.txt && rm hard.txt",
             dir) == 0);
    collected c;
    CHECK(ingest_collect(P("names.tar"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && c.docs[0]->chain_len == 1 && strcmp(c.docs[0]->chain[0], "caf\xC3\xA9.txt") == 0);
    collected_free(&c);
    /* zip stores the Latin-1 name without its UTF-8 flag: converted, kept */
    CHECK(sh("cd %s/src && zip -q ../names.zip \"$(printf 'caf\\351.txt')\"", dir) == 0);
    CHECK(ingest_collect(P("names.zip"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && c.docs[0]->chain_len == 1 && strcmp(c.docs[0]->chain[0], "caf\xC3\xA9.txt") == 0);
    collected_free(&c);
    CHECK(ingest_collect(P("dots.tar"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && strcmp(c.docs[0]->chain[0], "../../etc/a.txt") == 0);
    collected_free(&c);
    CHECK(ingest_collect(P("abs.tar"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && strcmp(c.docs[0]->chain[0], "/etc/sub/b.md") == 0);
    CHECK(access("/etc/sub/b.md", F_OK) != 0);
    collected_free(&c);
    CHECK(ingest_collect(P("links.tar"), NULL, 0, 0, NULL, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && find_event(&c, DSV4_SKIP_LINK, "links.tar :: link", "never followed") != NULL);
    CHECK(find_event(&c, DSV4_SKIP_LINK, "links.tar :: hard.txt", "never followed") != NULL);
    collected_free(&c);
    /* globs apply to entry names */
    dsv4_ingest_options o;
    dsv4_ingest_options_default(&o);
    const char *ex[] = {"*.md"};
    o.exclude = ex;
    o.n_exclude = 1;
    CHECK(ingest_collect(P("f.tar.gz"), NULL, 0, 0, &o, &c) == DSV4_INGEST_OK);
    CHECK(c.n_docs == 1 && find_event(&c, DSV4_SKIP_IGNORED, "f.tar.gz :: sub/b.md", "globs") != NULL);
    collected_free(&c);
}

int main(void)
{
    dir = make_tmpdir();
    if (!dir || sh("mkdir -p %s/src/sub && printf 'alpha\\n' > %s/src/a.txt && printf 'beta\\n' > %s/src/sub/b.md",
                   dir, dir, dir) != 0) {
        printf("FAIL setup\n");
        return 1;
    }
    RUN(every_format);
    RUN(nesting_and_depth_guard);
    RUN(guards_entries_bytes_input);
    RUN(ratio_guard_zip);
    RUN(zstd_bomb_keeps_rss_small);
    RUN(encrypted_entries);
    RUN(corrupt_and_truncated);
    RUN(hostile_names_and_links);
    remove_tree(dir);
    CHECK_EXIT();
}
