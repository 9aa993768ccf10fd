/* STAND-IN for Fujitsu's Power API header (pwr.h on Fugaku compute nodes), tests only.
 *
 * Declares the calls the kit makes (kit/energy.py: PowerApi) with the names Fujitsu's
 * header uses. The numeric values below are this stand-in's own, chosen to differ from the
 * Power API specification's defaults: the kit must read them from the header it is given,
 * as it reads the real values from /opt/FJSVtcs/pwrm/aarch64/include on Fugaku. */
#ifndef KIT_STANDIN_PWR_H
#define KIT_STANDIN_PWR_H

#include <stdint.h>

typedef void *PWR_Cntxt;
typedef void *PWR_Obj;
typedef uint64_t PWR_Time;

typedef enum {
    PWR_CNTXT_DEFAULT = 3,
    PWR_CNTXT_VENDOR,           /* 4 */
    PWR_CNTXT_FX1000 = 11       /* the measured-energy context */
} PWR_CntxtType;

typedef enum { PWR_ROLE_APP = 5, PWR_ROLE_MC, PWR_ROLE_OS } PWR_Role;

typedef enum {
    PWR_ATTR_PSTATE = 100,
    PWR_ATTR_POWER,             /* 101 */
    PWR_ATTR_ENERGY,            /* 102: estimated */
    PWR_ATTR_MEASURED_ENERGY = 120
} PWR_AttrName;

#define PWR_RET_SUCCESS 0
#define PWR_RET_FAILURE (-1)

int PWR_CntxtInit(PWR_CntxtType type, PWR_Role role, const char *name, PWR_Cntxt *cntxt);
int PWR_CntxtGetObjByName(PWR_Cntxt cntxt, const char *name, PWR_Obj *obj);
int PWR_ObjAttrGetValue(PWR_Obj obj, PWR_AttrName attr, void *value, PWR_Time *ts);
int PWR_CntxtDestroy(PWR_Cntxt cntxt);

#endif
