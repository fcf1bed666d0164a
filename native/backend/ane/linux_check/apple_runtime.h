// Force-included by .ci/objc_check.sh: the Apple Objective-C runtime symbols the .mm files use
// that GCC's libobjc headers lack (it dispatches through objc_msg_lookup instead).
#pragma once
#include <objc/runtime.h>
#ifdef __cplusplus
extern "C" {
#endif
id objc_msgSend(id self, SEL op, ...);
#ifdef __cplusplus
}
#endif
