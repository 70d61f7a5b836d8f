/*
 * Build-time generator: turns migrations/NNNN_*.sql into a C file defining xr_migrations[] (see
 * xr-migrations.h), so that xregd carries its schema and needs no files at run time.
 *
 *     migrations-embed SRCDIR OUTPUT.c FILE.sql...
 *
 * The files are emitted in name order whatever the command-line order. Every NNNN_*.sql in
 * SRCDIR must be among the arguments: a migration added to the folder but not to
 * migrations/meson.build would otherwise be silently left out of the binary.
 *
 * Runs on the build machine only (meson `native: true`); exits 1 with a message on any problem.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A migration is SQL text written by people; anything this large is a mistake. */
#define MIGRATION_MAX_BYTES (16 * 1024 * 1024)

typedef struct input {
    const char *path;
    const char *name; /* basename of path */
} input;

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* NNNN_<letters, digits, '_' or '-'>.sql */
static bool is_migration_name(const char *name)
{
    size_t n = strlen(name);
    if (n < 10 || strcmp(name + n - 4, ".sql") != 0 || name[4] != '_')
        return false;
    for (size_t i = 0; i < 4; i++)
        if (name[i] < '0' || name[i] > '9')
            return false;
    for (size_t i = 5; i < n - 4; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int compare_inputs(const void *a, const void *b)
{
    return strcmp(((const input *)a)->name, ((const input *)b)->name);
}

/* Read the whole file; NULL on error (message printed). *ret_n receives the length. */
static char *read_file(const char *path, size_t *ret_n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "migrations-embed: cannot open \"%s\": %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MIGRATION_MAX_BYTES + 1);
    if (!buf) {
        fprintf(stderr, "migrations-embed: out of memory\n");
        fclose(f);
        return NULL;
    }
    size_t n = fread(buf, 1, MIGRATION_MAX_BYTES + 1, f);
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        fprintf(stderr, "migrations-embed: cannot read \"%s\"\n", path);
        free(buf);
        return NULL;
    }
    if (n > MIGRATION_MAX_BYTES) {
        fprintf(stderr, "migrations-embed: \"%s\" is larger than %d bytes\n", path,
                MIGRATION_MAX_BYTES);
        free(buf);
        return NULL;
    }
    if (memchr(buf, '\0', n)) {
        fprintf(stderr, "migrations-embed: \"%s\" contains a NUL byte\n", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *ret_n = n;
    return buf;
}

/* Emit text as C string literals, one per source line, escaping what C would misread. */
static void write_literal(FILE *out, const char *text, size_t n)
{
    bool open = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (!open) {
            fputs("    \"", out);
            open = true;
        }
        if (c == '\n') {
            fputs("\\n\"\n", out);
            open = false;
        } else if (c == '\\' || c == '"') {
            fprintf(out, "\\%c", c);
        } else if (c == '?') {
            fputs("\\?", out); /* no trigraphs under -std=c17 */
        } else if (c < 0x20 || c >= 0x7f) {
            fprintf(out, "\\%03o", c); /* always 3 digits: a following digit stays a digit */
        } else {
            fputc(c, out);
        }
    }
    if (open)
        fputs("\"\n", out);
    if (n == 0)
        fputs("    \"\"\n", out);
}

/* Every NNNN_*.sql in dir must be one of the inputs. */
static bool check_directory(const char *dir, const input *inputs, size_t n)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "migrations-embed: cannot open directory \"%s\": %s\n", dir,
                strerror(errno));
        return false;
    }
    bool ok = true;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_migration_name(e->d_name))
            continue;
        bool listed = false;
        for (size_t i = 0; i < n && !listed; i++)
            listed = strcmp(inputs[i].name, e->d_name) == 0;
        if (!listed) {
            fprintf(stderr, "migrations-embed: \"%s/%s\" is not listed in migrations/meson.build\n",
                    dir, e->d_name);
            ok = false;
        }
    }
    closedir(d);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: migrations-embed SRCDIR OUTPUT.c FILE.sql...\n");
        return 1;
    }
    const char *srcdir = argv[1];
    const char *output = argv[2];
    size_t n = (size_t)(argc - 3);
    input *inputs = calloc(n > 0 ? n : 1, sizeof(*inputs));
    if (!inputs) {
        fprintf(stderr, "migrations-embed: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        inputs[i].path = argv[3 + i];
        inputs[i].name = base_name(argv[3 + i]);
        if (!is_migration_name(inputs[i].name)) {
            fprintf(stderr,
                    "migrations-embed: \"%s\" is not named NNNN_<name>.sql (4 digits, then "
                    "letters, digits, '_' or '-')\n",
                    inputs[i].path);
            return 1;
        }
    }
    qsort(inputs, n, sizeof(*inputs), compare_inputs);
    for (size_t i = 1; i < n; i++)
        if (strcmp(inputs[i - 1].name, inputs[i].name) == 0) {
            fprintf(stderr, "migrations-embed: \"%s\" is listed twice\n", inputs[i].name);
            return 1;
        }
    if (!check_directory(srcdir, inputs, n))
        return 1;

    FILE *out = fopen(output, "w");
    if (!out) {
        fprintf(stderr, "migrations-embed: cannot create \"%s\": %s\n", output, strerror(errno));
        return 1;
    }
    fputs("/* Generated by migrations/migrations-embed.c from migrations/NNNN_*.sql at build "
          "time; do not edit. */\n"
          "#include \"xr-migrations.h\"\n\n",
          out);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        char *text = read_file(inputs[i].path, &len);
        if (!text) {
            fclose(out);
            remove(output);
            return 1;
        }
        fprintf(out, "/* %s */\nstatic const char sql_%zu[] =\n", inputs[i].name, i);
        write_literal(out, text, len);
        fputs("    ;\n\n", out);
        free(text);
    }
    fputs("const registry_migration xr_migrations[] = {\n", out);
    for (size_t i = 0; i < n; i++)
        fprintf(out, "    {\"%s\", sql_%zu},\n", inputs[i].name, i);
    if (n == 0)
        fputs("    {0}, /* C has no empty arrays; xr_n_migrations is 0 */\n", out);
    fprintf(out, "};\n\nconst size_t xr_n_migrations = %zu;\n", n);
    free(inputs);
    if (fclose(out) != 0) {
        fprintf(stderr, "migrations-embed: cannot write \"%s\": %s\n", output, strerror(errno));
        remove(output);
        return 1;
    }
    return 0;
}
