/* STAND-IN for Fujitsu's libpwr.so (the Power API on Fugaku compute nodes), tests only.
 *
 * Same calls as the real library for what the kit reads: a context (PWR_CNTXT_FX1000 for
 * measured energy, PWR_CNTXT_DEFAULT for estimates), objects by name ("plat.node",
 * "plat.node.cpu.cmgN.cores", "plat.node.memN"), and their energy in joules. Its energy is
 * not measured: every read of an object advances its counter by a fixed step (node 50 J,
 * a CMG's cores 10 J, a CMG's memory 2 J), so a test can assert what the kit computes.
 * Measured energy is only given in the FX1000 context, estimates only in the default one,
 * as on Fugaku; anything else returns PWR_RET_FAILURE. */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "pwr.h"

struct cntxt { int type; int live; };
struct obj { struct cntxt *c; int kind; double energy; double step; };  /* kind 0 node, 1 cores, 2 mem */

static int open_contexts = 0;

int PWR_CntxtInit(PWR_CntxtType type, PWR_Role role, const char *name, PWR_Cntxt *cntxt) {
    if ((type != PWR_CNTXT_FX1000 && type != PWR_CNTXT_DEFAULT) || role != PWR_ROLE_APP || !name || !cntxt)
        return PWR_RET_FAILURE;
    struct cntxt *c = calloc(1, sizeof *c);
    c->type = type;
    c->live = 1;
    open_contexts++;
    *cntxt = c;
    return PWR_RET_SUCCESS;
}

int PWR_CntxtGetObjByName(PWR_Cntxt cntxt, const char *name, PWR_Obj *obj) {
    struct cntxt *c = cntxt;
    int cmg = -1;
    if (!c || !c->live || !name || !obj) return PWR_RET_FAILURE;
    struct obj *o = calloc(1, sizeof *o);
    o->c = c;
    if (strcmp(name, "plat.node") == 0) { o->kind = 0; o->step = 50.0; }
    else if (sscanf(name, "plat.node.cpu.cmg%d.cores", &cmg) == 1 && cmg >= 0 && cmg < 4) { o->kind = 1; o->step = 10.0; }
    else if (sscanf(name, "plat.node.mem%d", &cmg) == 1 && cmg >= 0 && cmg < 4) { o->kind = 2; o->step = 2.0; }
    else { free(o); return PWR_RET_FAILURE; }
    *obj = o;
    return PWR_RET_SUCCESS;
}

int PWR_ObjAttrGetValue(PWR_Obj obj, PWR_AttrName attr, void *value, PWR_Time *ts) {
    struct obj *o = obj;
    if (!o || !o->c->live || !value) return PWR_RET_FAILURE;
    if (attr == PWR_ATTR_MEASURED_ENERGY) {
        if (o->c->type != PWR_CNTXT_FX1000 || o->kind != 0) return PWR_RET_FAILURE;
    } else if (attr == PWR_ATTR_ENERGY) {
        if (o->c->type != PWR_CNTXT_DEFAULT) return PWR_RET_FAILURE;
    } else {
        return PWR_RET_FAILURE;
    }
    o->energy += o->step;
    *(double *)value = o->energy;
    if (ts) *ts = 0;
    return PWR_RET_SUCCESS;
}

int PWR_CntxtDestroy(PWR_Cntxt cntxt) {
    struct cntxt *c = cntxt;
    if (!c || !c->live) return PWR_RET_FAILURE;
    c->live = 0;  /* objects of a destroyed context fail from now on (kept: a test may read one) */
    open_contexts--;
    return PWR_RET_SUCCESS;
}

/* not part of the Power API: lets a test check that the kit closed what it opened */
int standin_open_contexts(void) { return open_contexts; }
