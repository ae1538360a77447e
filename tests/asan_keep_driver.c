/* Sanitizer builds only (`make asan`): keeps the CPU Vulkan driver loaded
 * until the process exits. The Vulkan loader unloads a driver at
 * vkDestroyInstance; LeakSanitizer reports at exit, when the frames of the
 * driver's own allocations then belong to no module, so the driver-only
 * suppressions in tests/lsan.supp could not name them and every test that
 * opened a device failed on lavapipe's leaks. Opening the driver once more
 * with RTLD_NODELETE keeps its code (and the LLVM it links) mapped. Linked
 * into every test binary and, in `make asan`, into bin-asan/dsv4-batch. */
#if defined(__SANITIZE_ADDRESS__)
#include <dlfcn.h>

__attribute__((constructor)) static void keep_driver_loaded(void)
{
    dlopen("libvulkan_lvp.so", RTLD_NOW | RTLD_NODELETE); /* absent (GPU machines): nothing to keep */
}
#else
typedef int asan_keep_driver_unused; /* an empty translation unit otherwise */
#endif
