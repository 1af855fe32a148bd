/* The TEI-compatible surface (routes land in the next step). */
#include "server/http.h"

const http_route tei_routes[] = {{0}};
