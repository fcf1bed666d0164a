// Declaration-only subset of Apple's CoreFoundation used by native/backend/ane (Linux check only).
#pragma once
#ifdef __cplusplus
extern "C" {
#endif
typedef const void* CFTypeRef;
typedef const struct __CFString* CFStringRef;
typedef const struct __CFDictionary* CFDictionaryRef;
void CFRelease(CFTypeRef cf);
#ifdef __cplusplus
}
#endif
