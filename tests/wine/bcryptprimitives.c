/* For the tests only: Wine 8.0 lacks ProcessPrng (bcryptprimitives.dll,
 * Windows 10 and later), which Rust's standard library and getrandom import
 * for random bytes. Built as bcryptprimitives.dll next to the .exe under test,
 * this forwards it to RtlGenRandom (SystemFunction036 in advapi32), which Wine
 * has. The release ships the .exe alone: real Windows has the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
