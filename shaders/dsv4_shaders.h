/* The SPIR-V of every compute shader, embedded in the binary at build time.
 *
 * scripts/build-shaders.sh compiles each line of shaders/shaders.list
 * ("NAME FILE.comp [-DDEFINE=VALUE ...]") with glslc and generates the table
 * below, so one GLSL source can give several named variants and the installed
 * program needs no shader files. */
#ifndef DSV4_SHADERS_H
#define DSV4_SHADERS_H

#include <stddef.h>
#include <stdint.h>

typedef struct dsv4_spirv {
    const char *name;     /* the NAME column of shaders.list */
    const uint32_t *code; /* SPIR-V words */
    size_t size;          /* in bytes */
} dsv4_spirv;

extern const dsv4_spirv dsv4_spirv_table[];
extern const size_t dsv4_spirv_count;

/* The shader called name, or NULL. */
const dsv4_spirv *dsv4_spirv_find(const char *name);

#endif
