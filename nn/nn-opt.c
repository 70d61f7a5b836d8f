/* Graph rewrites (filled in by the fusion commit). */
#include "nn-internal.h"

size_t nn_graph_optimize(nn_graph *g)
{
    (void)g;
    return 0;
}
