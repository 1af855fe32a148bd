/* The earlier embedding service's /api/v1 routes (they land in a later step). */
#include "server/http.h"

const http_route legacy_routes[] = {{0}};
