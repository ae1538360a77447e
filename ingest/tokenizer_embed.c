/* The DeepSeek-V4 tokenizer.json, carried inside the program so that
 * tokenizing needs no file at run time (the demo model generator also writes
 * these bytes into the model directories it makes). The file is pulled in by
 * the assembler's .incbin, which works with gcc and clang without a generated
 * C array of 6 MB; the Makefile makes this object depend on the json file.
 * The path is relative to the repository root, where make runs the compiler.
 * A NUL follows the data so it can also be read as a C string. */

__asm__(".section .rodata\n"
        ".balign 16\n"
        ".globl dsv4_tok_embedded_json\n"
        ".type dsv4_tok_embedded_json, @object\n"
        "dsv4_tok_embedded_json:\n"
        ".incbin \"models/deepseek-v4-tokenizer/tokenizer.json\"\n"
        ".globl dsv4_tok_embedded_json_end\n"
        ".type dsv4_tok_embedded_json_end, @object\n"
        "dsv4_tok_embedded_json_end:\n"
        ".byte 0\n"
        ".previous\n");
