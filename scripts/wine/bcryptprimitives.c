/* A stand-in bcryptprimitives.dll for Wine < 8.13, for tests only.
 *
 * Rust >= 1.78 programs get their random bytes from ProcessPrng in
 * bcryptprimitives.dll, which Wine gained in 8.13; Debian 12's Wine 8.0 has
 * no such DLL, so every Rust program exits at start ("bcryptprimitives.dll
 * not found"). This forwards ProcessPrng to advapi32's RtlGenRandom
 * (SystemFunction036), which Wine has. scripts/test-windows.sh builds it with
 * mingw-w64 and copies it into the test prefix's system32. Never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    /* RtlGenRandom takes a ULONG length: hand big requests over in parts. */
    while (length > 0) {
        ULONG part = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, part))
            return FALSE;
        data += part;
        length -= part;
    }
    return TRUE;
}
